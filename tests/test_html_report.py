"""report.html: a report's Markdown as one self-contained page, the lineage diagram, and what headless Chromium
shows of them (tables, figures and sample images rendered, each image's box showing its own pixels).

    pytest -q tests/test_html_report.py
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from sweeps.reporting.html_report import markdown_to_html, write_html, write_lineage_svg

from .browser import render

TRIALS = pd.DataFrame([
    {"stage": 1, "config_id": "s1-a", "best_val_loss": 3.1, "status": "TERMINATED", "stopped_by_asha": False,
     "asha_rung": np.nan, "epochs_run": 3, "parent": np.nan},
    {"stage": 1, "config_id": "s1-b", "best_val_loss": 3.4, "status": "TERMINATED", "stopped_by_asha": False,
     "asha_rung": np.nan, "epochs_run": 3, "parent": np.nan},
    {"stage": 2, "config_id": "s2-a-from-a", "best_val_loss": 2.2, "status": "TERMINATED", "stopped_by_asha": False,
     "asha_rung": np.nan, "epochs_run": 3, "parent": "s1-a"},
    {"stage": 2, "config_id": "s2-b-from-a", "best_val_loss": 2.9, "status": "TERMINATED", "stopped_by_asha": True,
     "asha_rung": 1.0, "epochs_run": 1, "parent": "s1-a"},
    {"stage": 2, "config_id": "s2-c-from-b", "best_val_loss": np.nan, "status": "ERROR", "stopped_by_asha": False,
     "asha_rung": np.nan, "epochs_run": 0, "parent": "s1-b"},
])
DECISIONS = [{"trial": "s2-a-from-a", "rung": 1, "decision": "continue"},
             {"trial": "s2-b-from-a", "rung": 1, "decision": "stop"}]


def _boxes(svg: str) -> dict[str, ET.Element]:
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    return {g.findall("s:text", ns)[0].text: g for g in root.findall("s:g", ns)}


def test_the_lineage_diagram_links_each_continuation_to_its_parent_and_marks_how_it_ended(tmp_path):
    path = write_lineage_svg(TRIALS, DECISIONS, tmp_path)
    svg = path.read_text()
    boxes = _boxes(svg)  # parses as SVG
    assert sorted(boxes) == ["s1-a", "s1-b", "s2-a-from-a", "s2-b-from-a", "s2-c-from-b"]
    assert svg.count("<path ") == 3  # one edge per stage-2 trial

    def look(name: str) -> tuple[str, str, str]:
        rect, detail = boxes[name][0], boxes[name][2].text
        return rect.get("stroke"), rect.get("stroke-dasharray") or "", detail

    assert look("s2-a-from-a") == ("#2e7d32", "", "best val loss 2.2000 · 3 epochs · r1 continue")  # the best
    assert look("s2-b-from-a")[1:] == ("6 4", "best val loss 2.9000 · stopped by ASHA at rung 1 · r1 stop")
    assert look("s2-c-from-b") == ("#c62828", "", "best val loss — · failed")
    assert look("s1-a")[2] == "best val loss 3.1000"
    assert write_lineage_svg(TRIALS[TRIALS["stage"] == 1], [], tmp_path / "none") is None  # no stage 2, no diagram


def test_the_lineage_diagram_marks_the_best_by_a_benchmark_metric_when_asked(tmp_path):
    table = TRIALS.assign(**{"pope.f1": [np.nan, np.nan, 0.5, 0.7, np.nan]})
    table.loc[3, "stopped_by_asha"] = False  # s2-b: a higher F1 than s2-a, a higher val loss
    svg = write_lineage_svg(table, [], tmp_path, select_by="pope.f1").read_text()
    boxes = _boxes(svg)
    assert boxes["s2-b-from-a"][0].get("stroke") == "#2e7d32" and boxes["s2-a-from-a"][0].get("stroke") == "#3b6ea8"
    assert boxes["s2-b-from-a"][2].text == "pope.f1 0.7000 · best val loss 2.9000 · 1 epochs"
    assert "green: the best stage-2 pope.f1" in svg
    (tmp_path / "loss").mkdir()
    by_loss = _boxes(write_lineage_svg(table, [], tmp_path / "loss").read_text())
    assert by_loss["s2-a-from-a"][0].get("stroke") == "#2e7d32"


def _figure(path, colour) -> None:
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(0, 40, (60, 90, 3)) + np.array(colour), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_the_page_is_self_contained_and_renders_its_tables_figures_and_images(tmp_path):
    _figure(tmp_path / "curve.png", (40, 90, 200))
    (tmp_path / "images").mkdir()
    q1 = Image.new("RGB", (64, 64), (230, 225, 250))  # easy-vqa's look: a yellow circle on lavender, of one grey
    ImageDraw.Draw(q1).ellipse((12, 12, 52, 52), fill=(255, 230, 0))
    q1.save(tmp_path / "images" / "q1.jpg")
    sample = Image.new("RGB", (64, 64), (250, 240, 250))
    sample.paste((20, 40, 220), (16, 16, 48, 48))
    sample.save(tmp_path / "images" / "q2.png")
    write_lineage_svg(TRIALS, DECISIONS, tmp_path)
    md = ("# A report\n\n**Bold** words and `code`.\n\n| config_id | val_loss |\n|---|---|\n| s2-a | 2.2000 |\n"
          "| s2-b \\| x | 2.9000 |\n\n![curve](curve.png)\n![lineage](lineage.svg)\n\n"
          "| image | question |\n|---|---|\n| ![](images/q2.png) | What colour? |\n| ![](images/q1.jpg) | Empty? |\n")
    (tmp_path / "report.md").write_text(md)
    page = write_html(tmp_path / "report.md")
    text = page.read_text()
    assert "<title>A report</title>" in text and "<strong>Bold</strong>" in text
    assert re.findall(r'<img src="([^"]*?)[;"]', text) == ["data:image/png", "data:image/svg+xml", "data:image/png",
                                                           "data:image/jpeg"]  # every image inlined
    assert "s2-b | x" in text  # an escaped pipe stays inside its cell

    shown = render(page, tmp_path / "browser")
    assert (shown.tables, shown.rows) == (2, 6)  # two tables of a header and two rows
    assert [i["alt"] for i in shown.images] == ["curve", "lineage", "", ""]
    assert all(i["decoded"] for i in shown.images), shown.images
    assert shown.blank_images() == [] and shown.unlike_their_source() == []
    shown.sources[0], shown.sources[2] = shown.sources[2], shown.sources[0]  # the check tells images apart
    assert [name[:14] for name in shown.unlike_their_source()] == ["curve", "data:image/png"]


def test_the_browser_check_sees_a_broken_or_missing_image(tmp_path, caplog):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    html = markdown_to_html("# R\n\n![bad](bad.png)\n![gone](gone.png)\n", tmp_path, "R")
    assert 'src="gone.png"' in html and "1 image(s) not found" in caplog.text  # left as a link, and said
    (tmp_path / "report.html").write_text(html)
    shown = render(tmp_path / "report.html", tmp_path / "browser")
    assert [i["decoded"] for i in shown.images] == [False, False]
