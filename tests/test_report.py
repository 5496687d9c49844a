"""The HTML report: built from demo data, self-contained (no network), every chart has data,
and headless Chromium draws something that is not blank."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from test_dashboards import demo_database

from flows.report import PANELS, build_report
from sinks.clickhouse import ChdbBackend

SPEC = re.compile(r'<script type="application/json" class="vl-spec" data-target="([^"]+)">'
                  r"(.*?)</script>", re.S)


@pytest.fixture(scope="module")
def report(chdb_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = demo_database(chdb_dir, "report")
    backend = ChdbBackend(chdb_dir)
    try:
        return build_report(backend, db, tmp_path_factory.mktemp("report") / "report.html")
    finally:
        backend.close()


def test_report_is_self_contained_and_every_chart_has_data(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert not re.search(r'<script[^>]+src=|<link[^>]+href=|https?://cdn', text)
    assert "vegaEmbed" in text and len(text) > 500_000  # vega, vega-lite, vega-embed inline
    specs = SPEC.findall(text)
    charts = [p for p in PANELS if p.kind != "table"]
    assert len(specs) == len(charts)
    for (target, body), panel in zip(specs, charts, strict=True):
        spec = json.loads(body)
        assert f'id={target}>' in text
        assert spec["data"]["values"], f"{panel.title}: no data"
        assert spec["title"] == panel.title
    tables = [p for p in PANELS if p.kind == "table"]
    assert text.count("<table><thead>") == len(tables)
    assert "<p class=note>no rows</p>" not in text


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and raw pixel rows of an 8-bit RGB/RGBA PNG (no PIL needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i:i + 3]) for r in rows[::7] for i in range(0, stride, bpp * 7)]


def screenshot(html: Path, png: Path, height: int = 3000) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium missing: `make services` installs it"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=15000", f"--screenshot={png}", f"--window-size=1400,{height}",
         html.resolve().as_uri()],
        check=True, capture_output=True, timeout=120)


def test_chromium_draws_the_report(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    screenshot(report, png)
    width, height, pixels = _png_pixels(png.read_bytes())
    assert (width, height) == (1400, 3000)
    colours = set(pixels)
    white = sum(p == b"\xff\xff\xff" for p in pixels) / len(pixels)
    assert len(colours) > 50, f"{len(colours)} colours: blank"
    assert white < 0.97, f"{white:.0%} white: blank"
