"""Analysts' pictures: the report queries, the Grafana dashboards made from them, and a
self-contained HTML report (Altair / Vega-Lite, the Vega libraries inlined: it opens with no
network) made from the same queries.

:data:`PANELS` is the one place the report queries live. Each panel's SQL names the database
``{db}`` and, where rows have a time, filters them with Grafana's ``$__timeFilter(col)``;
:func:`panel_sql` fills both in (the report and the tests use the whole period). The JSON
under ``deploy/grafana/dashboards/`` is generated from :data:`PANELS`
(``python -m flows.report --dashboards deploy/grafana/dashboards``) and a test keeps it so.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sinks.clickhouse import ClickHouseBackend

Kind = Literal["bar", "line", "heatmap", "table"]
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "cdp-clickhouse"}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_TIME_FILTER = re.compile(r"\$__timeFilter\(\s*[A-Za-z_][A-Za-z0-9_.]*\s*\)")


@dataclass(frozen=True)
class Panel:
    """One chart or table: its query, how to draw it (``x``; ``y`` one or more measures,
    several are drawn side by side; ``color`` a series field), and its dashboard."""

    dashboard: str
    title: str
    sql: str
    kind: Kind
    x: str = ""
    y: tuple[str, ...] = ()
    color: str = ""
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def _pivot_week(measure: str, source: str) -> str:
    """A local weekday × hour grid as one row per hour and a column per weekday."""
    days = ",\n       ".join(
        f"{measure.format(d=i)} AS {name}" for i, name in enumerate(WEEKDAYS, start=1))
    return f"SELECT hour,\n       {days}\nFROM {source}\nGROUP BY hour ORDER BY hour"


_OPEN_RATE = ("if(sumIf(delivered, weekday = {d}) > 0, "
              "sumIf(opened, weekday = {d}) / sumIf(delivered, weekday = {d}), 0)")

_P = Panel
DASHBOARDS: list[Dashboard] = [
    Dashboard("cdp-overview", "CDP triggers · overview",
              "Summary per trigger chain and per channel; sends per day.", [
        _P("overview", "Summary per trigger chain", """
SELECT trigger_id, messages_sent AS sent, delivered, opened, clicked, conversions
FROM {db}.trigger_summary ORDER BY sent DESC, trigger_id""", "bar", "trigger_id",
           ("sent", "delivered", "opened", "clicked", "conversions")),
        _P("overview", "Summary per channel", """
SELECT channel, messages_considered AS considered, messages_sent AS sent,
       customers_reached, conversions
FROM {db}.channel_summary ORDER BY channel""", "bar", "channel",
           ("considered", "sent", "customers_reached", "conversions")),
        _P("overview", "Sends per day and channel", """
SELECT toDateTime(day) AS time, channel, sum(sent) AS sent
FROM {db}.delivery_daily WHERE $__timeFilter(day)
GROUP BY time, channel ORDER BY time, channel""", "line", "time", ("sent",), "channel"),
        _P("overview", "Revenue per trigger chain (treated arm)", """
SELECT trigger_id, trigger_kind, messages_sent AS sent, conversions, revenue,
       round(conversion_rate, 4) AS conversion_rate
FROM {db}.trigger_summary ORDER BY revenue DESC, trigger_id""", "table"),
    ]),
    Dashboard("cdp-funnel", "CDP triggers · funnel per trigger",
              "Delivered → opened → clicked → converted per trigger, variant and channel; "
              "attributed and assisted purchases.", [
        _P("funnel", "Funnel per trigger", """
SELECT trigger_id, sum(sent) AS sent, sum(delivered) AS delivered, sum(opened) AS opened,
       sum(clicked) AS clicked, sum(converted) AS converted
FROM {db}.conversion_funnel WHERE $__timeFilter(day)
GROUP BY trigger_id ORDER BY sent DESC, trigger_id""", "bar", "trigger_id",
           ("sent", "delivered", "opened", "clicked", "converted")),
        _P("funnel", "Funnel dynamics: sent and converted per day", """
SELECT toDateTime(day) AS time, sum(sent) AS sent, sum(delivered) AS delivered,
       sum(opened) AS opened, sum(converted) AS converted
FROM {db}.conversion_funnel WHERE $__timeFilter(day)
GROUP BY time ORDER BY time""", "line", "time", ("sent", "delivered", "opened", "converted")),
        _P("funnel", "Effectiveness per chain: attributed and assisted revenue", """
SELECT trigger_id, attributed_revenue, assisted_revenue
FROM {db}.chain_effectiveness ORDER BY attributed_revenue DESC, trigger_id""", "bar",
           "trigger_id", ("attributed_revenue", "assisted_revenue")),
        _P("funnel", "Funnel per trigger, variant and channel", """
SELECT trigger_id, variant, channel, sum(sent) AS sent, sum(delivered) AS delivered,
       sum(opened) AS opened, sum(clicked) AS clicked, sum(converted) AS converted,
       sum(revenue) AS revenue
FROM {db}.conversion_funnel WHERE $__timeFilter(day)
GROUP BY trigger_id, variant, channel ORDER BY trigger_id, variant, channel""", "table"),
    ]),
    Dashboard("cdp-channels", "CDP triggers · channels and cascade",
              "Delivery dynamics, the current slice, the delivery report and why cascades "
              "moved on to the next channel.", [
        _P("channels", "Delivery rate per day and channel", """
SELECT toDateTime(day) AS time, channel,
       if(sum(sent) > 0, sum(delivered) / sum(sent), 0) AS delivery_rate
FROM {db}.delivery_daily WHERE $__timeFilter(day)
GROUP BY time, channel ORDER BY time, channel""", "line", "time", ("delivery_rate",),
           "channel"),
        _P("channels", "Cascade: why the next channel was tried", """
SELECT move_reason, channel, sum(messages) AS messages
FROM {db}.cascade_moves WHERE move_reason != ''
GROUP BY move_reason, channel ORDER BY messages DESC, move_reason, channel""", "bar",
           "move_reason", ("messages",), "channel"),
        _P("channels", "Current slice: the last 24 hours of sends", """
SELECT trigger_id, channel, sent, delivered, opened, bounced, failed, awaiting_receipt
FROM {db}.delivery_current ORDER BY sent DESC, trigger_id, channel""", "table"),
        _P("channels", "Delivery report", """
SELECT trigger_id, channel, template, sent, delivered, bounced, failed, no_receipt,
       round(delivery_rate, 4) AS delivery_rate
FROM {db}.delivery_report ORDER BY trigger_id, channel, template""", "table"),
        _P("channels", "Cascade steps", """
SELECT trigger_id, step, channel, sends, delivered, opened, bounced, failed,
       round(success_rate, 4) AS success_rate
FROM {db}.cascade_efficiency ORDER BY trigger_id, step, channel""", "table"),
    ]),
    Dashboard("cdp-lift", "CDP triggers · A/B/C lift",
              "Conversion per arm (treated, control, holdout) and variant; lift with its "
              "95 % interval.", [
        _P("lift", "Conversion rate per arm and variant", """
SELECT concat(trigger_id, ' · ', arm, if(variant = '', '', concat(' ', variant))) AS arm_variant,
       trigger_id, customers, conversion_rate
FROM {db}.variant_lift ORDER BY trigger_id, arm, variant""", "bar", "arm_variant",
           ("conversion_rate",), "trigger_id"),
        _P("lift", "Lift of sent messages vs control and holdout", """
SELECT trigger_id, variant, customers, round(conversion_rate, 4) AS conversion_rate,
       round(lift_vs_control, 4) AS lift_vs_control,
       round(lift_vs_control_ci_low, 4) AS control_ci_low,
       round(lift_vs_control_ci_high, 4) AS control_ci_high,
       round(lift_vs_holdout, 4) AS lift_vs_holdout,
       round(lift_vs_holdout_ci_low, 4) AS holdout_ci_low,
       round(lift_vs_holdout_ci_high, 4) AS holdout_ci_high
FROM {db}.variant_lift WHERE arm = 'treated' ORDER BY trigger_id, variant""", "table"),
        _P("lift", "Conversions and revenue per arm", """
SELECT trigger_id, arm, variant, channel, conversions, revenue
FROM {db}.conversions_by_arm ORDER BY trigger_id, arm, variant, channel""", "table"),
    ]),
    Dashboard("cdp-open-hours", "CDP triggers · open-hour heatmap",
              "Opens by the customer's local weekday and hour (UTC where the time zone is "
              "unknown).", [
        _P("heatmap", "Open rate by local hour (sent) and weekday",
           _pivot_week(_OPEN_RATE, "{db}.open_rate_by_hour"), "heatmap", "hour"),
        _P("heatmap", "Opens by local hour and weekday",
           _pivot_week("sumIf(opens, weekday = {d})", "{db}.open_hour_local"), "heatmap",
           "hour"),
    ]),
    Dashboard("cdp-segments", "CDP triggers · RFM and segments",
              "Customers per RFM segment (11 segments, config/rfm.yaml scores) and how "
              "dynamic segments gain and lose members.", [
        _P("segments", "Customers per RFM segment", """
SELECT rfm_segment, customers
FROM {db}.rfm_segments ORDER BY customers DESC, rfm_segment""", "bar", "rfm_segment",
           ("customers",)),
        _P("segments", "Segment entries per day", """
SELECT toDateTime(day) AS time, segment, sum(entered) AS entered
FROM {db}.segment_daily WHERE $__timeFilter(day)
GROUP BY time, segment ORDER BY time, segment""", "line", "time", ("entered",), "segment"),
        _P("segments", "Segment members now", """
SELECT segment, count() AS customers, min(since) AS first_entry, max(since) AS last_entry
FROM {db}.segment_membership GROUP BY segment ORDER BY customers DESC, segment""",
           "table"),
    ]),
    Dashboard("cdp-data-quality", "CDP triggers · data quality",
              "Contact data (missing, invalid, bounced), suppression reasons, dead letters.", [
        _P("quality", "Contact data quality per channel", """
SELECT channel, issue, events, customers
FROM {db}.contact_quality ORDER BY channel, issue""", "bar", "channel", ("events",), "issue"),
        _P("quality", "Why messages were not sent", """
SELECT reason, status, sum(decisions) AS decisions
FROM {db}.suppression_reasons GROUP BY reason, status
ORDER BY decisions DESC, reason""", "bar", "reason", ("decisions",), "status"),
        _P("quality", "Dead letters by reason", """
SELECT toString(reason) AS reason, count() AS dead_letters
FROM {db}.rejected_events WHERE $__timeFilter(received_at)
GROUP BY reason ORDER BY dead_letters DESC, reason""", "bar", "reason", ("dead_letters",)),
    ]),
]
PANELS: list[Panel] = [p for d in DASHBOARDS for p in d.panels]


def panel_sql(panel: Panel, database: str, time_filter: str = "1 = 1") -> str:
    """The panel's SQL on ``database``, ``$__timeFilter(…)`` replaced by ``time_filter``."""
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    sql = panel.sql.strip().replace("{db}", database)
    return _TIME_FILTER.sub(time_filter, sql)


# ---------------------------------------------------------------- Grafana


def _grafana_panel(p: Panel, i: int, database: str) -> dict[str, Any]:
    wide = p.kind in ("table", "heatmap")
    width = 24 if wide else 12
    pos = {"h": 9 if p.kind != "heatmap" else 12, "w": width,
           "x": 0 if wide else (i % 2) * 12, "y": i * 9}
    series = p.kind == "line"
    target = {"refId": "A", "datasource": DATASOURCE, "editorType": "sql",
              "format": 0 if series else 1, "queryType": "timeseries" if series else "table",
              "rawSql": p.sql.strip().replace("{db}", database)}
    panel: dict[str, Any] = {
        "id": i + 1, "title": p.title, "type": {"bar": "barchart", "line": "timeseries",
                                                 "heatmap": "table", "table": "table"}[p.kind],
        "datasource": DATASOURCE, "gridPos": pos, "targets": [target],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {},
    }
    if p.description:
        panel["description"] = p.description
    if p.kind == "bar":
        panel["options"] = {"xField": p.x, "orientation": "auto", "stacking": "none",
                            "showValue": "never", "legend": {"showLegend": True}}
    if p.kind == "heatmap":  # a weekday × hour grid: cells coloured by value
        panel["fieldConfig"]["defaults"] = {
            "color": {"mode": "continuous-GrYlRd"},
            "custom": {"cellOptions": {"type": "color-background"}, "align": "center"},
            "decimals": 2,
        }
    return panel


def grafana_dashboards(database: str = "cdp") -> dict[str, dict[str, Any]]:
    """Dashboard JSON by file name, for Grafana's file provisioning."""
    out = {}
    for d in DASHBOARDS:
        out[f"{d.uid}.json"] = {
            "uid": d.uid, "title": d.title, "description": d.description,
            "tags": ["cdp-triggers"], "timezone": "browser", "schemaVersion": 39,
            "editable": True, "refresh": "1m",
            "time": {"from": "now-30d", "to": "now"},
            "panels": [_grafana_panel(p, i, database) for i, p in enumerate(d.panels)],
        }
    return out


def write_dashboards(out_dir: str | Path, database: str = "cdp") -> list[Path]:
    """Write the dashboards' JSON files into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc in grafana_dashboards(database).items():
        path = out / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------- HTML report


def _chart(p: Panel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A Vega-Lite spec (via Altair) with the rows inline."""
    import altair as alt

    data = alt.Data(values=rows)
    base = alt.Chart(data).properties(width="container", height=260, title=p.title)
    if p.kind == "heatmap":
        days = list(WEEKDAYS)
        return base.transform_fold(days, as_=["weekday", "value"]).mark_rect().encode(
            x=alt.X("hour:O", title="local hour"),
            y=alt.Y("weekday:N", sort=days, title=None),
            color=alt.Color("value:Q", title=None, scale=alt.Scale(scheme="yelloworangered")),
            tooltip=["weekday:N", "hour:O", alt.Tooltip("value:Q", format=".3~f")],
        ).to_dict()
    if p.kind == "line":
        x = alt.X(f"{p.x}:T", title=None)
        if len(p.y) > 1:
            return base.transform_fold(list(p.y), as_=["measure", "value"]).mark_line(
                point=True).encode(x=x, y=alt.Y("value:Q", title=None),
                                   color="measure:N").to_dict()
        enc: dict[str, Any] = {"x": x, "y": alt.Y(f"{p.y[0]}:Q")}
        if p.color:
            enc["color"] = f"{p.color}:N"
        return base.mark_line(point=True).encode(**enc).to_dict()
    x = alt.X(f"{p.x}:N", title=None, sort=None, axis=alt.Axis(labelAngle=-30))
    if len(p.y) > 1:
        return base.transform_fold(list(p.y), as_=["measure", "value"]).mark_bar().encode(
            x=x, y=alt.Y("value:Q", title=None),
            color=alt.Color("measure:N", sort=list(p.y)), xOffset=alt.XOffset(
                "measure:N", sort=list(p.y)),
            tooltip=[f"{p.x}:N", "measure:N", "value:Q"]).to_dict()
    tips = [f"{k}:{'Q' if isinstance(v, int | float) else 'N'}"
            for k, v in (rows[0] if rows else {}).items()]
    enc = {"x": x, "y": alt.Y(f"{p.y[0]}:Q"), "tooltip": tips}
    if p.color:
        enc["color"] = f"{p.color}:N"
        enc["xOffset"] = f"{p.color}:N"
    return base.mark_bar().encode(**enc).to_dict()


def _table(cols: list[str], rows: list[tuple[Any, ...]], limit: int = 200) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>"
        for r in rows[:limit])
    more = f"<p class=note>{len(rows) - limit} more rows</p>" if len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { margin: 0 0 4px; } h2 { margin: 28px 0 8px; border-bottom: 2px solid #4c78a8; }
.meta, .note { color: #666; } .grid { display: flex; flex-wrap: wrap; gap: 16px; }
.card { flex: 1 1 600px; min-width: 560px; border: 1px solid #ddd; border-radius: 6px;
        padding: 10px; } .card.wide { flex-basis: 100%; }
.chart { width: 100%; } table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: right; }
th:first-child, td:first-child { text-align: left; } h3 { margin: 0 0 6px; font-size: 14px; }
"""


def _vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one script, from vl-convert (no network)."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    return vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())


def report_html(backend: ClickHouseBackend, database: str) -> str:
    """The report as one HTML document (scripts and data inline)."""
    sections, specs = [], []
    for d in DASHBOARDS:
        cards = []
        for p in d.panels:
            cols, rows = backend.query(panel_sql(p, database))
            if p.kind == "table":
                body = _table(cols, rows) if rows else "<p class=note>no rows</p>"
                cards.append(f"<div class='card wide'><h3>{html.escape(p.title)}</h3>"
                             f"{body}</div>")
                continue
            n = len(specs)
            specs.append(_chart(p, [dict(zip(cols, r, strict=True)) for r in rows]))
            cls = "card wide" if p.kind == "heatmap" else "card"
            cards.append(f"<div class='{cls}'><div class=chart id=chart-{n}></div>"
                         + ("" if rows else "<p class=note>no rows</p>") + "</div>")
        sections.append(f"<h2>{html.escape(d.title.split('·')[-1].strip().capitalize())}</h2>"
                        f"<p class=meta>{html.escape(d.description)}</p>"
                        f"<div class=grid>{''.join(cards)}</div>")
    spec_tags = "\n".join(
        f'<script type="application/json" class="vl-spec" data-target="chart-{i}">'
        f"{_script_json(s)}</script>" for i, s in enumerate(specs))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CDP triggers report · {database}</title>
<style>{_STYLE}</style>
<script>{_vega_bundle()}</script>
</head><body>
<h1>CDP triggers report</h1>
<p class=meta>database <b>{html.escape(database)}</b> · made {stamp} · the same queries as the
Grafana dashboards (whole period)</p>
{''.join(sections)}
{spec_tags}
<script>
for (const tag of document.querySelectorAll("script.vl-spec")) {{
  vegaEmbed("#" + tag.dataset.target, JSON.parse(tag.textContent),
            {{actions: false, renderer: "svg"}}).catch(console.error);
}}
</script>
</body></html>
"""


def _script_json(spec: dict[str, Any]) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(spec, default=str).replace("<", "\\u003c")


def build_report(backend: ClickHouseBackend, database: str, out_path: str | Path) -> Path:
    """Write the self-contained HTML report of ``database`` to ``out_path``; returns it."""
    out = Path(out_path)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(backend, database), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.report --dashboards DIR``: regenerate the dashboards' JSON."""
    ap = argparse.ArgumentParser(prog="python -m flows.report")
    ap.add_argument("--dashboards", required=True, help="directory for the JSON files")
    ap.add_argument("--database", default="cdp")
    args = ap.parse_args(argv)
    for path in write_dashboards(args.dashboards, args.database):
        print(path)


if __name__ == "__main__":
    main()
