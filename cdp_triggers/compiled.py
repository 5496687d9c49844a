"""The hot path compiled: the modules in ``HOT`` built by Cython, loaded in place of their
source only when built from exactly that source.

Every event passes through the same few modules (parsing, the engine, the keyed step, the
rows). Compiled unchanged by Cython (annotations do not type anything, so the semantics
are Python's), the engine runs ~1.5× as fast and the whole flow 1.15–1.2× (A/B pairs in
``docs/benchmarks.md``). The build is a cache, never a second version of the code:

* ``cdp-triggers compile`` (``make venv`` runs it) compiles each module into
  ``.build/compiled`` and records the SHA-256 of the source it was built from; a build
  never rewrites a file another process may have loaded (each is named by its hash);
* at import, a module of ``HOT`` is taken from its build only when the build's source hash
  equals the source's on disk now and the build is for this interpreter; otherwise the
  source is imported as usual. An edited module therefore runs as edited, compiled or not,
  and a checkout without a C compiler runs the same code uncompiled;
* ``CDP_COMPILED=0`` imports every module from source (debugging, profiling by line).

Each package holding a module of ``HOT`` installs the finder in its ``__init__`` (this
module imports nothing of the project). Pickles name classes by module and name, so state
and snapshots move freely between compiled and uncompiled processes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

HOT: tuple[str, ...] = (
    "cdp_triggers.events",
    "cdp_triggers.ids",
    "cdp_triggers.records",
    "cdp_triggers.clock",
    "cdp_triggers.calendar",
    "operators.engine",
    "operators.conditions",
    "operators.schedule",
    "operators.keyed",
    "operators.align",
    "operators.routing",
    "operators.segments",
    "operators.policy",
    "operators.interest",
    "operators.sendtime",
    "operators.metrics",
    "state.customer",
    "state.seen",
    "state.compact",
    "state.profiles",
    "sinks.catalogue",
    "sinks.effects",
    "sinks.clickhouse",
    "sinks.clickhouse_sink",
    "sinks.kafka_out",
    "flows.sources",
    "flows.pipeline",
)
ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
# Cython directives: the modules are plain Python, compiled as such
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def build_dir() -> Path:
    return Path(os.environ.get("CDP_COMPILED_DIR") or ROOT / ".build" / "compiled")


def enabled() -> bool:
    return os.environ.get("CDP_COMPILED", "1").strip().lower() not in ("0", "false", "no", "off")


def _abi() -> str:
    return f"{sys.implementation.cache_tag} {sysconfig.get_config_var('EXT_SUFFIX')}"


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _source_spec(name: str, path: list[str] | None) -> importlib.machinery.ModuleSpec | None:
    return importlib.machinery.PathFinder.find_spec(name, path)


def read_manifest(where: Path | None = None) -> dict[str, dict[str, str]]:
    """``{module: {"sha256", "file", "abi"}}`` of the build; empty when there is none."""
    try:
        data = json.loads(((where or build_dir()) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds the modules the build's manifest names (``HOT``, as built) in the build when
    it matches their source, else leaves them to the usual finders. ``loaded`` names the
    modules it took from the build."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.manifest = read_manifest(where)
        self.loaded: list[str] = []

    def find_spec(self, name: str, path: list[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        entry = self.manifest.get(name)
        if entry is None or entry.get("abi") != _abi():
            return None
        source = _source_spec(name, path)
        if source is None or not source.origin or not source.origin.endswith(".py"):
            return None
        binary = self.where / entry["file"]
        try:
            fresh = _digest(source.origin) == entry["sha256"] and binary.is_file()
        except OSError:
            return None
        if not fresh:
            return None  # edited since the build: the source, as edited
        loader = importlib.machinery.ExtensionFileLoader(name, str(binary))
        spec = importlib.util.spec_from_file_location(name, str(binary), loader=loader)
        self.loaded.append(name)
        return spec


def install() -> CompiledFinder | None:
    """Put the finder first on ``sys.meta_path`` (once; not with ``CDP_COMPILED=0``)."""
    for f in sys.meta_path:
        if isinstance(f, CompiledFinder):
            return f
    if not enabled():
        return None
    finder = CompiledFinder(build_dir())
    if not finder.manifest:
        return None
    sys.meta_path.insert(0, finder)
    return finder


def loaded() -> list[str]:
    """The modules this process took from the build (for the start-up log line)."""
    return [m for f in sys.meta_path if isinstance(f, CompiledFinder) for m in f.loaded]


def build(modules: tuple[str, ...] = HOT, where: Path | None = None, jobs: int = 2,
          quiet: bool = True) -> list[str]:
    """Compile the modules whose build is missing or stale; returns those compiled.
    Needs Cython and a C compiler (``pip install -e '.[test]'`` brings Cython)."""
    where = where or build_dir()
    manifest = read_manifest(where)
    todo: list[tuple[str, str, str]] = []
    for name in modules:
        parent = name.rpartition(".")[0]
        # the package as imported (an editable install is found by its own finder)
        where_from = list(importlib.import_module(parent).__path__) if parent else None
        spec = _source_spec(name, where_from)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"cannot find the source of {name}")
        sha = _digest(spec.origin)
        entry = manifest.get(name, {})
        if (entry.get("sha256") == sha and entry.get("abi") == _abi()
                and (where / entry.get("file", "")).is_file()):
            continue
        todo.append((name, spec.origin, sha))
    if not todo:
        return []
    from Cython.Build import cythonize  # build time only
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    # -w: warnings about the generated C are not ours to act on (errors still show)
    exts = [Extension(name, [src], extra_compile_args=["-w"]) for name, src, _ in todo]
    exts = cythonize(exts, build_dir=str(where / "c"), compiler_directives=DIRECTIVES,
                     nthreads=jobs, quiet=quiet, force=True)
    dist = Distribution({"ext_modules": exts})
    dist.verbose = 0  # not every compiler command line
    cmd = build_ext(dist)
    cmd.build_lib = str(where / "lib")
    cmd.build_temp = str(where / "tmp")
    cmd.parallel = jobs
    cmd.force = True  # (only stale modules are here; never trust timestamps)
    cmd.ensure_finalized()
    cmd.run()
    for name, _, sha in todo:
        built = Path(cmd.get_ext_fullpath(name))
        # named by its source hash: a running process may have the previous build mapped,
        # and a file is never rewritten, only replaced by a new name (ExtensionFileLoader
        # takes the init function from the module's name, not the file's)
        binary = built.with_name(f"{name.rpartition('.')[2]}.{sha[:16]}"
                                 f"{sysconfig.get_config_var('EXT_SUFFIX')}")
        os.replace(built, binary)
        manifest[name] = {"sha256": sha, "file": str(binary.relative_to(where)), "abi": _abi()}
    tmp = where / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(where / MANIFEST)
    kept = {where / e["file"] for e in manifest.values()}
    for old in (where / "lib").rglob("*.so"):
        if old not in kept:
            old.unlink()  # (a process that mapped it keeps its mapping)
    return [name for name, _, _ in todo]
