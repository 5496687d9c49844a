"""The compiled hot path (``cdp_triggers.compiled``): a build is used only for the exact
source it was built from, and compiled code decides exactly what the source decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdp_triggers import compiled

ROOT = Path(__file__).resolve().parent.parent

# an engine replay (shipped config, snapshots round-tripped now and then), every record's
# repr digested; prints the digest, the record count and the modules taken from the build
REPLAY = """
import hashlib, json
from cdp_triggers import compiled
from cdp_triggers.events import Event, parse_event
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from config.loader import load_config
from operators.engine import Engine
from state.customer import CustomerState
from state.profiles import DictProfileStore
gen = SyntheticRetail(SyntheticConfig(customers=1500, days=2, seed=5))
events = [e for r in gen.events() if isinstance(e := parse_event(r, "t"), Event)]
store = DictProfileStore(gen.profiles())
engine = Engine(load_config())
h, n, states = hashlib.blake2b(digest_size=16), 0, {}
for i, e in enumerate(events):
    st = states.setdefault(e.customer_id, CustomerState(e.customer_id))
    for r in engine.handle(st, e, max(st.high_water, e.ts), store.get):
        h.update(repr(r).encode()); n += 1
    if i % 5 == 0:
        states[e.customer_id] = CustomerState.from_bytes(st.to_bytes())
for cid in sorted(states):
    for r in engine.handle(states[cid], None, gen.end_ms, store.get):
        h.update(repr(r).encode()); n += 1
print(json.dumps({"digest": h.hexdigest(), "records": n, "compiled": compiled.loaded()}))
"""


def _run(code: str, env: dict[str, str], cwd: Path = ROOT) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _fresh_build() -> bool:
    manifest = compiled.read_manifest()
    return bool(manifest) and all(m in manifest for m in compiled.HOT)


def test_the_project_build_covers_every_hot_module_and_this_process_uses_it() -> None:
    """``make venv`` builds every module of HOT (a C compiler is part of the set-up); the
    suite's own process, which imported them all, took each from the build, so every test
    runs the compiled code. Edited since the build: ``make venv`` compiles it again."""
    if not _fresh_build():
        pytest.skip("no build of the hot path (`make venv` or `cdp-triggers compile` "
                    "makes it)")
    import flows.app  # noqa: F401  (imports every hot module)

    stale = sorted(set(compiled.HOT) - set(compiled.loaded()))
    assert not stale, f"imported from source, the build does not match: {stale} (make venv)"
    for name in compiled.HOT:
        assert not sys.modules[name].__file__.endswith(".py"), name


def test_compiled_and_source_engines_make_the_same_records() -> None:
    """Same input, same records: a replay of the shipped config under the compiled modules
    and under their source gives the same records, byte for byte in their repr."""
    if not _fresh_build():
        pytest.skip("no build of the hot path")
    source = json.loads(_run(REPLAY, {"CDP_COMPILED": "0"}))
    built = json.loads(_run(REPLAY, {"CDP_COMPILED": "1"}))
    assert source["compiled"] == []
    assert {"operators.engine", "state.customer", "cdp_triggers.events"} <= set(built["compiled"])
    assert source["records"] > 5_000
    assert (built["digest"], built["records"]) == (source["digest"], source["records"])


def test_a_build_is_used_only_for_the_source_it_was_built_from(tmp_path: Path,
                                                                monkeypatch) -> None:
    """A module built, then edited: the edit runs (from source) until it is built again;
    ``CDP_COMPILED=0`` always takes the source. A build of nothing changed compiles
    nothing."""
    pytest.importorskip("Cython")
    pkg = tmp_path / "hotpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    mod = pkg / "mod.py"
    mod.write_text("def answer():\n    return 1\n")
    where = tmp_path / "build"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert compiled.build(("hotpkg.mod",), where=where) == ["hotpkg.mod"]
    assert compiled.build(("hotpkg.mod",), where=where) == []  # up to date
    probe = ("import json, sys; from cdp_triggers import compiled; compiled.install(); "
             "import hotpkg.mod as m; "
             "print(json.dumps([m.answer(), m.__file__.endswith('.py'), compiled.loaded()]))")
    env = {"CDP_COMPILED_DIR": str(where), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    assert json.loads(_run(probe, env, tmp_path)) == [1, False, ["hotpkg.mod"]]
    assert json.loads(_run(probe, {**env, "CDP_COMPILED": "0"}, tmp_path)) == [1, True, []]
    mod.write_text("def answer():\n    return 2\n")
    assert json.loads(_run(probe, env, tmp_path)) == [2, True, []]  # stale: the source
    assert compiled.build(("hotpkg.mod",), where=where) == ["hotpkg.mod"]
    assert json.loads(_run(probe, env, tmp_path)) == [2, False, ["hotpkg.mod"]]
