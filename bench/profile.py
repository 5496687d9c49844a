"""Where the time goes (issue 10): py-spy samples of the shipped flow, top hotspots.

Runs ``py-spy record --format raw --subprocesses`` over ``python -m bench.floors --only
shipped`` (one Tansu broker, the shipped config, replay clock, Redis profiles, chdb and the
sends topic, 1 worker) and keeps the samples of the flow's child process. A sampling
profiler does not slow small calls down the way cProfile does, so the shares are the wall
time of the one thread that runs the dataflow (Bytewax's Rust code shows as the Python
frame that called into it).

    python -m bench.profile                        # 10k customers × 3 days
    python -m bench.profile --raw /tmp/spy.txt     # keep the raw samples (flamegraph.pl)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.sections import replace_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- profile: bench.profile -->", "<!-- /profile -->"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# named rows: a function (file suffix, name) and everything it calls
GROUPS = (
    ("engine `Engine.handle_split` (incl. profile reads)", ("operators/engine.py", "handle_split")),
    ("profile reads (Redis, synchronous)", ("state/profiles.py", "get")),
    ("profile prefetch (Redis, one read per batch)", ("state/profiles.py", "warm")),
    ("aligned Kafka source `next_batch`", ("flows/sources.py", "next_batch")),
    ("  of which `parse_event`", ("cdp_triggers/events.py", "parse_event")),
    ("effects sink `write_batch`", ("sinks/effects.py", "write_batch")),
    ("keyed step `on_batch`", ("operators/keyed.py", "on_batch")),
    ("state snapshots (`CustomerState.snapshot`)", ("state/customer.py", "snapshot")),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";"):
        m = FRAME.match(part.strip())
        if m:
            out.append((m["file"] or "", m["func"]))
    return out


def _named(qualified: str, name: str) -> bool:
    """py-spy names methods ``Class.method``: match on the method's own name."""
    return qualified == name or qualified.endswith("." + name)


def analyse(raw: str, top: int = 15) -> dict:
    """Shares of the flow child's samples: named groups (inclusive) and the functions with
    the most self time (the leaf frame of a sample)."""
    samples: list[tuple[list[tuple[str, str]], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = _frames(stack)
        if any(f.endswith("bench/floors.py") and _named(fn, "_run_timed") for f, fn in frames):
            samples.append((frames, int(count)))
    total = sum(c for _, c in samples) or 1
    groups = {}
    for label, (suffix, func) in GROUPS:
        n = sum(c for fr, c in samples
                if any(f.endswith(suffix) and _named(fn, func) for f, fn in fr))
        groups[label] = n / total
    leaf: Counter[str] = Counter()
    for fr, c in samples:
        f, fn = fr[-1]
        where = f.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        leaf[f"{fn} ({where})"] += c
    return {"samples": total, "groups": groups,
            "self": [(k, v / total) for k, v in leaf.most_common(top)]}


def record(customers: int, days: float, rate: int, raw_path: Path) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    subprocess.run([spy, "record", "--format", "raw", "--subprocesses", "--rate", str(rate),
                    "--output", str(raw_path), "--", sys.executable, "-m", "bench.floors",
                    "--only", "shipped", "--rounds", "1", "--customers", str(customers),
                    "--days", str(days)], cwd=ROOT, check=True, capture_output=True,
                   # from source: compiled functions are not Python frames py-spy can name
                   env={**os.environ, "CDP_COMPILED": "0"})


def report(r: dict) -> str:
    rows = "\n".join(f"| {k} | {v:.0%} |" for k, v in r["groups"].items())
    hot = "\n".join(f"| `{k}` | {v:.1%} |" for k, v in r["self"])
    return f"""| where (inclusive) | share of samples |
|---|---:|
{rows}

Top self time (the frame on top of the stack when sampled; the self time of
`_run_timed`, which calls `run_main`, is Bytewax's Rust run loop, and that of a source's
`next_batch` includes librdkafka):

| function (file) | self |
|---|---:|
{hot}
"""


def write_section(path: Path, body: str, customers: int, days: float, samples: int) -> None:
    """Replace the text between the markers (appended at the end when missing)."""
    head = (f"{START}\n## Profile (issue 10)\n\n`python -m bench.profile --customers "
            f"{customers} --days {days:g}` on {platform.machine()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: py-spy "
            f"({samples:,} samples of the shipped flow's process, `bench.floors --only "
            f"shipped`, from source: `CDP_COMPILED=0`, so that py-spy names every "
            f"function; compiled, the same work takes 0.8–0.9 of the time).\n\n")
    section = head + body + END + "\n"
    replace_section(path, START, END, section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=15_000)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--raw", help="keep the raw samples here (else a temporary file)")
    ap.add_argument("--from-raw", help="analyse these raw samples instead of recording")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args(argv)
    if a.from_raw:
        raw_path = Path(a.from_raw)
    else:
        raw_path = Path(a.raw or tempfile.mkstemp(prefix="py-spy-", suffix=".txt")[1])
        record(a.customers, a.days, a.rate, raw_path)
    r = analyse(raw_path.read_text())
    body = report(r)
    print(body)
    if not a.no_write:
        write_section(Path(a.out), body, a.customers, a.days, r["samples"])
        print(f"wrote {a.out}")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
