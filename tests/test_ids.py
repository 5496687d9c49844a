"""Ids are stored (ClickHouse dedupes on them, snapshots keep them): they never change."""

from cdp_triggers.ids import stable_fraction, stable_id


class Tag(str):
    """A str subclass: its text is what counts, as for a plain string."""


def test_ids_are_the_ones_every_earlier_version_made():
    assert stable_id("miss", "c008091", "browse_abandonment", "count_not_reached",
                     20760) == "40485f635a20ea129251ac6f43bfb6bb"
    assert stable_id("a", 1, 2.5, None, "ü:x") == "2f96526885d1f66a50ffdb565f7d9a77"
    assert stable_id("x", size=8) == "53fd9599d7cdb571"
    assert stable_fraction("spread", "t", "c1") == 0.6175713054897827


def test_parts_are_joined_unambiguously():
    assert stable_id("ab", "c") != stable_id("a", "bc")
    assert stable_id("1", 1) == stable_id(1, "1")  # a part is its text
    assert stable_id(Tag("t")) == stable_id("t")
