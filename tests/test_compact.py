"""The compact pickle of keyed state (state/compact.py): exact round trips, smaller than the
default form, snapshots of the former layout still restore, repeated strings shared."""

from __future__ import annotations

import base64
import copyreg
import dataclasses
import io
import pickle
from dataclasses import dataclass, fields

import pytest

from cdp_triggers.events import Event
from cdp_triggers.records import (
    Conversion,
    Decision,
    Duplicate,
    InputSeen,
    Lifecycle,
    Outcome,
    Profile,
    ProfileUpdate,
    SegmentChange,
    Send,
    StartMiss,
)
from operators.policy import Sent
from state.compact import Upgradable
from state.customer import CustomerState, Instance, Touch

# A snapshot written by the code before the compact form (commit 1369ebc: the default
# `(None, {slot: value})` pickle of the slotted dataclasses, fields of that layout only).
OLD_SNAPSHOT = base64.b64decode("""
gASVdgMAAAAAAACMDnN0YXRlLmN1c3RvbWVylIwNQ3VzdG9tZXJTdGF0ZZSTlCmBlE59lCiMC2N1c3RvbWVyX2lk
lIwDYzQylIwJaW5zdGFuY2VzlH2UjBVhYmFuZG9uZWRfY2FydB9jYXJ0LTGUaACMCEluc3RhbmNllJOUKYGUTn2U
KIwKdHJpZ2dlcl9pZJSMDmFiYW5kb25lZF9jYXJ0lIwDa2V5lIwGY2FydC0xlIwLaW5zdGFuY2VfaWSUjAJpMZSM
DnN0YXJ0X2V2ZW50X2lklIwCZTGUjApzdGFydGVkX2F0lE3oA4wLYWN0aXZpdHlfYXSUTdAHjANkdWWUTbgLjARz
dGVwlEsBjAdjb250ZXh0lH2UKIwHY2FydF9pZJRoEYwFdG90YWyUR0ApAAAAAAAAdYwKZXZlbnRfdHlwZZSMDWFk
ZGVkX3RvX2NhcnSUjAd2YXJpYW50lIwBQpSMA2FybZSMAJSMC2NoYW5uZWxfaWR4lEsBjAhhd2FpdGluZ5SMAnMw
lIwJc3RlcF9iYXNllEsAjAdlbnRlcmVklIiMBGhlbGSUaCOMB2VhcmxpZXKUjANzLTGUhZR1hpRic4wKbGFzdF9l
bnRyeZR9lGgPTdAHc4wEc2VlbpR9lChoFU3oA4wCZTKUTdAHdYwEY2FydJR9lIwIY29uc2VudHOUfZSMD2VtYWls
Om1hcmtldGluZ5SITYQDhpRzjAd0b3VjaGVzlF2UaACMBVRvdWNolJOUKYGUTn2UKIwHc2VuZF9pZJRoJmgOaA9o
IGghjAdjaGFubmVslIwFZW1haWyUjAJ0c5RNxAmMBndpbmRvd5RKAFwmBWgSaBNoGUsBaCKMB3RyZWF0ZWSUjARr
aW5klIwJbWFya2V0aW5nlHWGlGJhjAZjb3VudHOUfZSMCHNlbnRfbG9nlF2UjAdpbnZhbGlklI+UKIwDc21zlJCM
CmludmFsaWRfYXSUfZRoTk3cBXOMB3Byb2ZpbGWUTowMb3JkZXJzX2NvdW50lEsCjAt0b3RhbF9zcGVudJRHQFjg
AAAAAACMDWxhc3Rfb3JkZXJfYXSUTSADjAVleGl0c5RdlIwHcGVuZGluZ5RdlIwKaGlnaF93YXRlcpRN0AeMCXBy
dW5lZF9hdJRN6AOMB3JlZnVzZWSUfZSMBm1pc3Nlc5R9lHWGlGIu""")

# Declaration order IS the compact layout: fields may only be appended after these.
LAYOUT = {
    Instance: ("trigger_id", "key", "instance_id", "start_event_id", "started_at",
               "activity_at", "due", "step", "context", "event_type", "variant", "arm",
               "channel_idx", "awaiting", "step_base", "entered", "held", "earlier",
               "timed", "sent_step", "sent_channel", "sent_outcome", "branching"),
    Touch: ("send_id", "trigger_id", "variant", "channel", "ts", "window", "instance_id",
            "step", "arm", "kind"),
    CustomerState: ("customer_id", "instances", "last_entry", "seen", "cart", "consents",
                    "touches", "counts", "sent_log", "invalid", "invalid_at", "profile",
                    "orders_count", "total_spent", "last_order_at", "exits", "pending",
                    "high_water", "pruned_at", "refused", "misses", "first_order_at",
                    "orders", "ev_total", "ev_recent", "bought", "segments", "seg_due",
                    "read_hours", "read_last", "birthday", "registered_at", "sched",
                    "sched_done", "sched_basis"),
}


@dataclass(frozen=True, slots=True)
class Record(Upgradable):
    """A frozen record kept in state (like a Profile), opted in."""

    __getstate__ = Upgradable.__getstate__
    __setstate__ = Upgradable.__setstate__

    key: str
    count: int = 0
    added_later: str = "none"


def frozen_old_form(obj: object, values: list) -> bytes:
    """Pickle ``obj`` as ``dataclasses`` pickles a frozen slotted class: its values, in
    order — here those of an older layout."""

    class Old(pickle.Pickler):
        def reducer_override(self, o: object):  # type: ignore[override]
            return (copyreg.__newobj__, (type(o),), values) if o is obj else NotImplemented

    buf = io.BytesIO()
    Old(buf, pickle.HIGHEST_PROTOCOL).dump(CustomerState("c", profile=obj))
    return buf.getvalue()


def sample() -> CustomerState:
    """The state OLD_SNAPSHOT holds, built by today's classes."""
    inst = Instance("abandoned_cart", "cart-1", "i1", "e1", 1000, 2000, 3000, step=1,
                    context={"cart_id": "cart-1", "total": 12.5}, event_type="added_to_cart",
                    variant="B", channel_idx=1, awaiting="s0", entered=True, earlier=("s-1",))
    return CustomerState(
        "c42", instances={"abandoned_cart\x1fcart-1": inst},
        last_entry={"abandoned_cart": 2000}, seen={"e1": 1000, "e2": 2000},
        consents={"email:marketing": (True, 900)},
        touches=[Touch("s0", "abandoned_cart", "B", "email", 2500, 86_400_000, "i1", 1)],
        invalid={"sms"}, invalid_at={"sms": 1500}, orders_count=2, total_spent=99.5,
        last_order_at=800, high_water=2000, pruned_at=1000)


def old_form(obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """Pickle as the former code did: every slot by name, ``(None, {slot: value})``."""

    class Old(pickle.Pickler):
        def reducer_override(self, o: object):  # type: ignore[override]
            if isinstance(o, Upgradable):
                return (copyreg.__newobj__, (type(o),),
                        (None, {f.name: getattr(o, f.name) for f in fields(o)}))
            return NotImplemented

    buf = io.BytesIO()
    Old(buf, protocol).dump(obj)
    return buf.getvalue()


def test_round_trip_is_exact_types_included():
    st = sample()
    st.total_spent = 0  # an int where the default is 0.0: not "the default"
    st.touches.append(Touch("s1", "t", "", "sms", 1, 2, arm="control", kind="transactional"))
    st.instances["x\x1f"] = Instance("x", "", "i2", "e2", 1, 1, 5, entered=False, held="q")
    back = pickle.loads(pickle.dumps(st))
    assert back == st
    assert type(back.total_spent) is int
    st.total_spent = -0.0  # equal to the default 0.0, but not the same text
    assert str(pickle.loads(pickle.dumps(st)).total_spent) == "-0.0"
    assert CustomerState.from_bytes(back.to_bytes()) == st
    empty = CustomerState("c1")
    assert pickle.loads(pickle.dumps(empty)) == empty


def test_restored_defaults_are_fresh_objects():
    a, b = (pickle.loads(pickle.dumps(CustomerState("c"))) for _ in range(2))
    a.seen.add("e", 1)
    a.cart = {"p": {}}
    assert b.seen == {} and b.cart == {}
    assert b.invalid == frozenset() and b.pending == ()  # shared, immutable: never changed


def test_compact_form_is_smaller_than_the_named_form():
    st = sample()
    new, old = pickle.dumps(st), old_form(st)
    assert pickle.loads(old) == pickle.loads(new) == st
    assert len(new) < 0.6 * len(old), (len(new), len(old))
    assert b"trigger_id" not in new and b"customer_id" not in new  # no field names


def test_a_snapshot_of_the_former_layout_restores():
    back = pickle.loads(OLD_SNAPSHOT)
    assert back == sample()
    # fields appended since that snapshot read as their defaults, and pickle compactly now
    assert pickle.loads(pickle.dumps(back)) == back


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_former_form_restores_at_any_protocol(protocol):
    st = sample()
    assert pickle.loads(old_form(st, protocol)) == st


def test_repeated_strings_are_shared_after_restore():
    a, b = (pickle.loads(pickle.dumps(sample())) for _ in range(2))
    ta, tb = a.touches[0], b.touches[0]
    assert ta.trigger_id is tb.trigger_id and ta.channel is tb.channel
    assert ta.variant is tb.variant
    ia, ib = a.instances["abandoned_cart\x1fcart-1"], b.instances["abandoned_cart\x1fcart-1"]
    assert ia.trigger_id is ib.trigger_id and ia.event_type is ib.event_type
    assert next(iter(a.consents)) is next(iter(b.consents))


def test_a_snapshot_from_a_newer_layout_is_refused_clearly():
    touch = Touch("s", "t", "", "email", 1, 2)
    state = touch.__getstate__()
    future = (state[0] | 1 << len(fields(Touch)), *state[1:], "new")
    t = Touch.__new__(Touch)
    with pytest.raises(ValueError, match="newer version"):
        t.__setstate__(future)


@pytest.mark.parametrize("cls", list(LAYOUT))
def test_fields_are_only_appended(cls):
    names = tuple(f.name for f in fields(cls))
    assert names[:len(LAYOUT[cls])] == LAYOUT[cls], (
        f"{cls.__name__}: the compact pickle is positional, so a field may only be appended "
        "(reordering or removing one needs a layout version in state/compact.py)")


def test_a_frozen_record_of_an_older_layout_restores_and_stays_frozen():
    back = pickle.loads(frozen_old_form(Record("k", 3), ["k", 3])).profile
    assert back == Record("k", 3) and back.added_later == "none"
    assert pickle.loads(pickle.dumps(back)) == back  # and snapshots again, compactly
    assert b"added_later" not in pickle.dumps(back)
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.count = 4  # type: ignore[misc]
    assert hash(back) == hash(Record("k", 3))


def test_a_profile_kept_before_its_date_fields_restores():
    p = Profile("c1", "Europe/Berlin", "de", frozenset({"email"}), {"email:marketing": True})
    back = pickle.loads(frozen_old_form(p, [p.customer_id, p.timezone, p.locale, p.contacts,
                                            p.consents])).profile
    assert back.birthday == "" and back.registered_at == 0
    assert pickle.loads(pickle.dumps(back)) == back


def test_stored_form_is_compressed_and_plain_pickles_still_restore():
    st = sample()
    stored = st.to_bytes()
    assert CustomerState.from_bytes(stored) == st
    assert not stored.startswith(b"\x80") and len(stored) < len(pickle.dumps(st))
    assert CustomerState.from_bytes(pickle.dumps(st)) == st  # a snapshot written before
    assert CustomerState.from_bytes(OLD_SNAPSHOT) == sample()


@pytest.mark.parametrize("send_id", ["5b8ea129b1f4a906031891591e5a919b", "s0", "ABCD", "abc",
                                     "", "ab cd", "0a"])
def test_hex_ids_pickle_as_bytes_and_come_back_as_the_same_text(send_id):
    t = Touch(send_id, "t", "", "email", 1, 2, instance_id=send_id)
    back = pickle.loads(pickle.dumps(CustomerState("c", touches=[t]))).touches[0]
    assert back == t and type(back.send_id) is str and type(back.instance_id) is str
    if len(send_id) == 32:  # a real id (cdp_triggers.ids): its 16 bytes, not 32 characters
        assert send_id.encode() not in pickle.dumps(t)
        assert bytes.fromhex(send_id) in pickle.dumps(t)


def test_the_profile_in_state_pickles_without_its_class_and_restores_from_either_form():
    p = Profile("c42", "Europe/Berlin", "de", frozenset({"email", "sms"}),
                {"email:marketing": True, "sms:transactional": False}, "02-29", 5)
    st = sample()
    st.profile = p
    new = pickle.dumps(st)
    assert new.count(b"Profile") == 0
    assert pickle.loads(new).profile == p and type(pickle.loads(new).profile) is Profile
    before = old_form(st)  # the state of a former version holds the Profile object itself
    assert pickle.loads(before).profile == p


def _filled(cls: type) -> object:
    """An instance with a distinct value in every field."""
    values = {"int": 7, "float": 1.5, "bool": True, "dict[str, Any]": {"k": [1]}}
    return cls(*(values.get(f.type, f"v{i}") for i, f in enumerate(fields(cls))))


POSITIONAL = [Decision, Send, Lifecycle, Conversion, Outcome, StartMiss, ProfileUpdate,
              Duplicate, InputSeen, SegmentChange, Sent, Event]


@pytest.mark.parametrize("cls", POSITIONAL, ids=lambda c: c.__name__)
def test_records_pickle_by_position_and_their_generic_form_still_loads(cls):
    obj = _filled(cls)
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) == obj and type(pickle.loads(data)) is cls
    assert fields(cls)[0].name.encode() not in data  # no field names, no per-object fields()

    class Generic(pickle.Pickler):  # how the dataclass pickled it before (e.g. in state)
        def reducer_override(self, o: object):  # type: ignore[override]
            if o is obj:
                return (copyreg.__newobj__, (cls,), [getattr(o, f.name) for f in fields(o)])
            return NotImplemented

    buf = io.BytesIO()
    Generic(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    assert pickle.loads(buf.getvalue()) == obj
    if all(f.type != "dict[str, Any]" for f in fields(cls)):  # compared and hashed by value
        assert hash(pickle.loads(data)) == hash(obj)


def test_the_shared_empty_map_reads_as_empty_refuses_writes_and_restores_as_itself():
    from state.compact import EMPTY, own

    a, b = CustomerState("a"), CustomerState("b")
    assert a.refused is EMPTY is b.refused and a.refused == {} and not a.ev_total
    with pytest.raises(TypeError):
        a.refused["k"] = 1
    own(a, "refused")["k"] = 1
    assert a.refused == {"k": 1} and b.refused is EMPTY  # b's is still the shared one
    assert pickle.loads(pickle.dumps(EMPTY)) is EMPTY
    assert pickle.loads(pickle.dumps(b)).refused is EMPTY
    a.refused = {}  # emptied by a prune: restores as the shared one
    assert pickle.loads(pickle.dumps(a)).refused is EMPTY
    assert pickle.loads(pickle.dumps(sample())) == sample()  # invalid_at given: its own dict
