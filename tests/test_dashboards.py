"""Every Grafana panel's SQL runs on chdb against demo data and returns rows; the dashboard
JSON is the one generated from flows.report.PANELS."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig
from config.loader import load_config
from flows.demo import run_demo
from flows.report import DATASOURCE, PANELS, grafana_dashboards
from sinks.clickhouse import ChdbBackend

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALWAYS = "1 = 1"
MACRO = re.compile(r"\$__timeFilter\(\s*[A-Za-z_][A-Za-z0-9_.]*\s*\)")


def demo_database(chdb_dir: str, prefix: str) -> str:
    """A small embedded demo (300 customers × 2 days) in a database of its own."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    settings = Settings(clickhouse_url=f"chdb://{chdb_dir}", clickhouse_database=name)
    run_demo(load_config(), settings, SyntheticConfig(customers=300, days=2, seed=11),
             use_redis=False, say=lambda *_, **__: None)
    return name


@pytest.fixture(scope="module")
def demo_db(chdb_dir: str) -> str:
    return demo_database(chdb_dir, "dash")


def panel_queries() -> list[tuple[str, str, str]]:
    """(file, panel title, SQL) of every panel in the provisioned JSON."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["rawSql"]))
    return out


def test_dashboard_json_is_generated_from_the_panels() -> None:
    generated = grafana_dashboards("cdp")
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(generated)
    for name, doc in generated.items():
        assert json.loads((DASHBOARDS / name).read_text()) == doc, (
            f"{name} is stale: python -m flows.report --dashboards deploy/grafana/dashboards")
    assert len(panel_queries()) == len(PANELS)
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"] == DATASOURCE


def test_provisioning_names_the_dashboards_and_the_analyst() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    source = (prov / "datasources" / "clickhouse.yaml").read_text()
    assert "grafana-clickhouse-datasource" in source and "username: analyst" in source
    assert f"uid: {DATASOURCE['uid']}" in source
    assert "/var/lib/grafana/dashboards/cdp" in (prov / "dashboards" / "cdp.yaml").read_text()


@pytest.mark.parametrize("where,title,sql", panel_queries(), ids=lambda v: str(v)[:40])
def test_every_panel_query_runs_and_has_rows(backend: ChdbBackend, demo_db: str, where: str,
                                             title: str, sql: str) -> None:
    runnable = MACRO.sub(ALWAYS, sql).replace("cdp.", f"{demo_db}.")
    assert "$__" not in runnable, f"{where} · {title}: a Grafana macro the test cannot fill"
    cols, rows = backend.query(runnable)
    assert cols and rows, f"{where} · {title}: no rows on demo data"
