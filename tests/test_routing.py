"""Events move to their customers' workers in bundles: the prediction of Bytewax's routing
is pinned against Bytewax itself, and a wrong prediction changes no decision."""

from __future__ import annotations

import doctest
import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, cluster_main

import operators.routing as routing
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from config.loader import load_config
from flows.sources import RawEvent
from operators.engine import Engine
from operators.keyed import EngineRuntime
from operators.routing import Topology, owner, route_key
from state.profiles import DictProfileStore
from tests.test_flow_embedded import _decision_keys, run_records


def test_docstring_examples() -> None:
    assert doctest.testmod(routing).failed == 0


class _Where(DynamicSink):
    """Records which worker each item reached (a dynamic sink writes where the item is)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int):
        sink = self

        class Part(StatelessSinkPartition):
            def write_batch(self, items: list[str]) -> None:
                with sink.lock:
                    sink.seen.update(dict.fromkeys(items, worker_index))

        return Part()


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_owner_is_where_bytewax_routes_a_key(workers: int) -> None:
    keys = [f"c{i:06d}" for i in range(500)] + ["", "é-ünïcode", "x" * 40, "7", " to-0"]
    flow = Dataflow("where")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    kept = op.stateful_map("route", keyed, lambda _s, v: (None, v))
    where = _Where()
    op.output("out", op.map("unkey", kept, lambda kv: kv[0]), where)
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    assert where.seen == {k: owner(k, workers) for k in keys}
    assert len(set(where.seen.values())) == workers  # every worker owns some keys


def test_bundles_keep_batch_order_per_worker_and_name_their_worker() -> None:
    topo = Topology()
    topo.workers = 3
    pairs = [(f"c{i}", i) for i in range(60)]
    bundles = topo.bundle(pairs)
    assert sorted(p for _, (ps, _) in bundles for p in ps) == sorted(pairs)
    for key, (ps, ticks) in bundles:
        assert {owner(c, 3) for c, _ in ps} == {owner(key, 3)}
        assert [i for _, i in ps] == sorted(i for _, i in ps)
        assert ticks == ()
    topo.workers = 1
    assert topo.bundle(pairs) == [(route_key(0, 1), (pairs, ()))]
    assert topo.bundle([]) == []


def test_in_band_marks_reach_every_worker_and_stay_on_it_in_the_engine_step() -> None:
    """A batch's shard marks go to every worker, an empty bundle where it owns none of the
    events, under route keys no customer has (the engine's step takes them under the same
    key, so they stay on that worker)."""
    topo = Topology()
    topo.workers = 4
    pairs = [("c1", 1)]
    ticks = (("s0", 99),)
    bundles = topo.bundle(pairs, ticks)
    assert sorted(owner(k, 4) for k, _ in bundles) == [0, 1, 2, 3]
    assert all(t == ticks for _, (_, t) in bundles)
    assert sum(len(ps) for _, (ps, _) in bundles) == 1
    for key, _ in bundles:  # (the engine's step takes the marks under the same key)
        assert key.startswith(" ")  # ids are stripped: never a customer's
    topo.workers = 1
    assert topo.bundle([], ticks) == [(route_key(0, 1), ([], ticks))]


def test_the_probe_tells_the_runtime_how_many_workers_run_it() -> None:
    gen = SyntheticRetail(SyntheticConfig(customers=30, days=1, seed=5))
    store = DictProfileStore(gen.profiles())
    raws = [RawEvent(b, f"syn:{i}") for i, b in enumerate(gen.events())]
    runtime = EngineRuntime(Engine(load_config()), lambda: store.get, mode="replay",
                            horizon_ms=gen.end_ms)
    run_records(TestingSource(raws), runtime, workers=3)
    assert runtime.topology.workers == 3


def test_a_wrong_prediction_moves_events_twice_and_decides_the_same(monkeypatch) -> None:
    """Every bundle sent to one worker (as another Bytewax hash would): the engine's own
    keyed step still brings each event to its customer's state."""
    gen = SyntheticRetail(SyntheticConfig(customers=200, days=2, seed=11,
                                          price_change_rate=0, stockout_rate=0))
    store = DictProfileStore(gen.profiles())
    raws = [RawEvent(b, f"syn:{i}") for i, b in enumerate(gen.events())]

    def runtime() -> EngineRuntime:
        return EngineRuntime(Engine(load_config()), lambda: store.get, mode="replay",
                             horizon_ms=gen.end_ms)

    right = run_records(TestingSource(raws), runtime(), workers=2)
    monkeypatch.setattr(routing, "owner", lambda key, workers: 0)
    wrong = run_records(TestingSource(raws), runtime(), workers=2)
    assert _decision_keys(right) == _decision_keys(wrong)
    assert len(_decision_keys(right)) > 50
