"""Smart send time, measured: the embedded demo twice on the same seed — the shipped config,
and the same config whose browse_abandonment and price_drop steps use
``send_at: preferred_hour`` — and the open rate of those triggers' sends in each (from
ClickHouse ``send_facts``). The simulated gateway's customers read at a habitual local hour
(``cdp_triggers.gateway_sim``), so the difference is what holding a message to the hour a
customer was seen reading in gains there.

    .venv/bin/python -m bench.sendtime [--customers 4000] [--days 14] [--seed 7]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig
from config.loader import DEFAULT_CONFIG_DIR, load_config
from flows.demo import run_demo
from sinks.clickhouse import open_backend

TIMED = ("browse_abandonment", "price_drop")  # many sends per customer, no cascade wait
SEND_AT = {"mode": "preferred_hour", "within": "24h"}


def config_copy(root: Path, send_at: bool) -> Path:
    """The shipped config (its policy included); with ``send_at``, TIMED's steps hold."""
    out = root / ("send_at" if send_at else "at_once")
    shutil.copytree(DEFAULT_CONFIG_DIR, out,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", "schema"))
    if send_at:
        for tid in TIMED:
            path = out / "triggers" / f"{tid}.yaml"
            doc = yaml.safe_load(path.read_text())
            for step in doc["steps"]:
                step["send_at"] = SEND_AT
            path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return out


def measure(backend, db: str) -> dict[str, tuple[int, int, int, int]]:
    """Per TIMED trigger (and all of them): sends, delivered, opened, converted."""
    names = ", ".join(f"'{t}'" for t in TIMED)
    rows = backend.query_rows(
        f"SELECT trigger_id, count(), sum(delivered), sum(opened), sum(converted) "
        f"FROM {db}.send_facts WHERE trigger_id IN ({names}) AND channel != 'sms' "
        f"GROUP BY trigger_id ORDER BY trigger_id")
    out = {r[0]: tuple(int(x) for x in r[1:]) for r in rows}
    out["(both)"] = tuple(sum(v[i] for v in out.values()) for i in range(4))
    return out


def paired(backend, at_once: str, send_at: str) -> tuple[int, int, int]:
    """The messages send_at held, and the very same messages (same instance, step and
    channel: instance ids do not depend on the config) in the run that sent at once:
    (messages, opened when held, opened at once)."""
    names = ", ".join(f"'{t}'" for t in TIMED)
    [row] = backend.query_rows(
        f"SELECT count(), sum(h.opened), sum(o.opened) "
        f"FROM {send_at}.send_facts AS h "
        f"INNER JOIN {at_once}.send_facts AS o "
        f"  ON o.instance_id = h.instance_id AND o.step = h.step AND o.channel = h.channel "
        f"WHERE h.trigger_id IN ({names}) AND h.channel != 'sms' AND (h.instance_id, h.step) IN "
        f"  (SELECT instance_id, step FROM {send_at}.decisions "
        f"   WHERE reason = 'send_time_deferred')")
    return int(row[0]), int(row[1] or 0), int(row[2] or 0)


def held(backend, db: str) -> dict[str, int]:
    """Deferred rows of smart send time by why (preferred_hour / fallback_hour)."""
    return dict(backend.query_rows(
        f"SELECT splitByChar(':', detail)[1] AS why, count() FROM {db}.decisions "
        f"WHERE reason = 'send_time_deferred' GROUP BY why ORDER BY why"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=4000)
    p.add_argument("--days", type=float, default=14)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-sendtime-"))
    url = f"chdb://{work / 'chdb'}"
    backend = open_backend(url)
    syn = SyntheticConfig(customers=a.customers, days=a.days, seed=a.seed)
    results = {}
    try:
        for send_at in (False, True):
            label = "send_at" if send_at else "at_once"
            config = load_config(config_copy(work, send_at))
            s = Settings(clickhouse_url=url, clickhouse_database=f"st_{label}",
                         config_dir=work / label)
            t0 = time.perf_counter()
            run_demo(config, s, syn, use_redis=False, say=lambda *_, **__: None)
            results[label] = (measure(backend, s.clickhouse_database),
                              held(backend, s.clickhouse_database), time.perf_counter() - t0)
        pair = paired(backend, "st_at_once", "st_send_at")
    finally:
        backend.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"smart send time: {a.customers:,} customers × {a.days:g} days, seed {a.seed}; "
          f"{', '.join(TIMED)} on push/e-mail")
    print(f"{'trigger':<20} {'run':<8} {'sends':>7} {'opened':>7} {'open rate':>9} "
          f"{'of delivered':>12} {'converted':>9}")
    for tid in (*TIMED, "(both)"):
        rates = []
        for label in ("at_once", "send_at"):
            sends, delivered, opened, converted = results[label][0].get(tid, (0, 0, 0, 0))
            rate = opened / sends if sends else 0.0
            rates.append(rate)
            print(f"{tid:<20} {label:<8} {sends:>7,} {opened:>7,} {rate:>9.1%} "
                  f"{(opened / delivered if delivered else 0):>12.1%} {converted:>9,}")
        print(f"{'':<20} {'gain':<8} {'':>7} {'':>7} {(rates[1] - rates[0]) * 100:>+8.1f}pp"
              f" ({(rates[1] / rates[0] - 1) if rates[0] else 0:+.0%} relative)")
    n, when_held, at_once = pair
    if n:
        print(f"the {n:,} messages send_at held: opened {when_held / n:.1%} when held vs "
              f"{at_once / n:.1%} when the same messages went at once "
              f"({(when_held - at_once) / n * 100:+.1f}pp)")
    why = results["send_at"][1]
    print(f"held by send_at: {', '.join(f'{k} {v:,}' for k, v in why.items()) or 'none'}; "
          f"runs {results['at_once'][2]:.0f} s and {results['send_at'][2]:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
