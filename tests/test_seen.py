"""state/seen.py: the dedupe ids in two flat buffers behave exactly as the dict they
replace (event id → ts, insertion ordered), whatever the ids hold."""

from __future__ import annotations

import doctest
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

import state.seen
from state.customer import CustomerState
from state.seen import ESC, SEP, SeenIds

# ids with the separator and the escape in them, and ids that look like escapes
ids = st.one_of(st.sampled_from(["e1", "e2", f"a{SEP}b", f"a{ESC}sb", f"{ESC}", f"{SEP}",
                                 f"{ESC}{ESC}", "a", "ab", "b"]),
                st.text(min_size=1, max_size=6))
ops = st.lists(st.one_of(st.tuples(st.just("add"), ids, st.integers(0, 10**13)),
                         st.tuples(st.just("keep"), st.integers(0, 10**13),
                                   st.integers(0, 5))), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 6))
def test_it_behaves_as_the_dict_it_replaces(steps, most):
    model: dict[str, int] = {}
    seen = SeenIds()
    for op, a, b in steps:
        if op == "add":
            fresh = a not in model
            assert seen.add(a, b, most) is fresh
            if fresh:
                model[a] = b
                if most and len(model) > most:
                    del model[next(iter(model))]
        else:
            kept = [(k, v) for k, v in model.items() if v >= a]
            model = dict(kept[-b:] if b > 0 else [])
            seen.keep(a, b)
        assert seen.items() == list(model.items()) and len(seen) == len(model)
        for k in [*model, "e1", f"a{SEP}b", "a", SEP, ESC]:
            assert (k in seen) is (k in model), k
        if model:
            assert seen.oldest_ts() == next(iter(model.values()))
        back = pickle.loads(pickle.dumps(seen, pickle.HIGHEST_PROTOCOL))
        assert back == seen and back.items() == seen.items()


def test_a_part_of_an_id_or_of_two_ids_is_not_an_id_seen():
    seen = SeenIds.of({"order-12": 1, "34": 2})
    for probe in ("order", "12", f"12{SEP}34", "order-1", "2", "order-12x"):
        assert probe not in seen
    assert "order-12" in seen and "34" in seen


def test_a_snapshot_holding_seen_as_a_dict_restores_as_seen_ids():
    st_ = CustomerState("c1")
    st_.seen.add("e1", 5)

    class Old(pickle.Pickler):  # the former field value: a plain dict
        def reducer_override(self, o):  # type: ignore[override]
            return (dict, ([("e1", 5)],)) if o is st_.seen else NotImplemented

    import io
    buf = io.BytesIO()
    Old(buf, pickle.HIGHEST_PROTOCOL).dump(st_)
    back = pickle.loads(buf.getvalue())
    assert type(back.seen) is SeenIds and back.seen.items() == [("e1", 5)]
    assert CustomerState("c2", seen={"e9": 1}).seen.items() == [("e9", 1)]


def test_an_entry_costs_a_fraction_of_a_dict_entry():
    import sys
    n = 100
    seen = SeenIds.of({f"e7-{i:09d}": 1_793_580_374_916 + i for i in range(n)})
    as_dict = {f"e7-{i:09d}": 1_793_580_374_916 + i for i in range(n)}
    flat = sys.getsizeof(seen.ids) + sys.getsizeof(seen.ts)
    deep = sys.getsizeof(as_dict) + sum(sys.getsizeof(k) + sys.getsizeof(v)
                                        for k, v in as_dict.items())
    assert flat < deep / 4, (flat, deep)


def test_the_docstring_examples_hold():
    assert doctest.testmod(state.seen).failed == 0
