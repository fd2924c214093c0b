"""Reports you can look at: a report's Markdown rendered as one self-contained HTML page (every figure and sample
image inlined as a data URI: the file can be mailed or opened from anywhere), and the stage-1 → stage-2 lineage
drawn as an SVG diagram (``lineage.svg``, which report.md shows too).

``vlm-sweep run`` writes ``OUT/report.html`` beside ``OUT/report.md``; ``vlm-sweep report`` writes
``EXPERIMENT/report.html`` beside its report.md. The Markdown stays the source: the page shows the same tables,
figures, ASHA decisions and sample generations, with a style sheet.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd

from vlm_core.base.outputs import atomic_write_text

from .benchmark_table import VAL_LOSS, best_row

log = logging.getLogger(__name__)

LINEAGE_SVG = "lineage.svg"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #1d232a; }
h1 { font-size: 1.6em; border-bottom: 2px solid #3b6ea8; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccd5df; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 12.5px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccd5df; padding: 3px 7px; text-align: left; vertical-align: middle; }
th { background: #eef3f8; position: sticky; top: 0; }
tr:nth-child(even) td { background: #f8fafc; }
td img { width: 72px; height: auto; image-rendering: pixelated; }
p > img, figure img { max-width: 100%; height: auto; border: 1px solid #e3e8ee; }
code { background: #f1f3f5; padding: 0 .25em; border-radius: 3px; font-size: 12.5px; }
pre { background: #f1f3f5; padding: .8em; overflow-x: auto; }
"""


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def inline_images(page: str, root: Path) -> tuple[str, list[str]]:
    """Every ``<img src>`` that names a local file (relative to ``root``, or absolute) becomes a data URI; returns
    the page and the sources that were not found (left as they are)."""
    missing: list[str] = []

    def one(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        if src.startswith(("data:", "http://", "https://")):
            return m.group(0)
        path = Path(unquote(src))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            missing.append(src)
            return m.group(0)
        return f'{m.group(1)}{_data_uri(path)}{m.group(3)}'

    return re.sub(r'(<img\s[^>]*?src=")([^"]*)(")', one, page), missing


def markdown_to_html(markdown: str, root: Path, title: str) -> str:
    """One self-contained page from a report's Markdown (tables, code, images inlined)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body, missing = inline_images(body, root)
    if missing:
        log.warning("report.html: %d image(s) not found, left as links: %s", len(missing), ", ".join(missing[:5]))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def write_html(markdown_path: str | Path) -> Path:
    """Render ``markdown_path`` (a report.md) as ``report.html`` beside it; returns the page's path."""
    md = Path(markdown_path)
    text = md.read_text()
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), md.stem)
    out = md.with_suffix(".html")
    atomic_write_text(out, markdown_to_html(text, md.parent, title))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the lineage diagram

BOX_W, BOX_H, GAP, COL_GAP, PAD = 440, 40, 10, 110, 20
STATUS_STYLE = {"best": ("#e6f4ea", "#2e7d32", ""), "done": ("#ffffff", "#3b6ea8", ""),
                "asha": ("#f1f3f5", "#868e96", "6 4"), "error": ("#fdecea", "#c62828", "")}


def _box(x: float, y: float, title: str, detail: str, kind: str) -> str:
    fill, stroke, dash = STATUS_STYLE[kind]
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="1.5"{dash_attr}/>'
            f'<text x="{x + 8}" y="{y + 16}" font-size="12" font-family="monospace">{html.escape(title)}</text>'
            f'<text x="{x + 8}" y="{y + 32}" font-size="11" fill="#495057">{html.escape(detail)}</text></g>')


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and v != v) else f"{float(v):.4f}"


def lineage_svg(table: pd.DataFrame, decisions: list[dict] | None = None, select_by: str = VAL_LOSS) -> str | None:
    """Stage-1 parents (left) → the stage-2 trials that started from their best checkpoint (right): best val loss
    of each, ASHA's decision at each rung, and how each trial ended (the best stage-2 trial by ``select_by`` green —
    the lowest val loss, or a benchmark metric of ``table``'s, shown in each box —, stopped by ASHA grey and dashed,
    failed red). None when the sweep has no stage 2."""
    s2 = table[table["stage"] == 2]
    if s2.empty:
        return None
    s1 = table[table["stage"] == 1].set_index("config_id")
    rungs: dict[str, list[str]] = {}
    for d in decisions or []:
        rungs.setdefault(d["trial"], []).append(f"r{d['rung']} {d['decision']}")
    s2 = s2.sort_values(["parent", "config_id"])
    parents = list(dict.fromkeys(s2["parent"].fillna("(no parent)")))
    by_metric = select_by != VAL_LOSS and select_by in s2.columns
    chosen = best_row(s2, select_by if by_metric else VAL_LOSS)
    best = chosen["config_id"] if chosen is not None else None
    legend = f"the best stage-2 {select_by}" if by_metric else "the lowest stage-2 val loss"
    height = PAD * 2 + 24 + max(len(parents), len(s2)) * (BOX_H + GAP) + 16
    width = PAD * 2 + 2 * BOX_W + COL_GAP
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif">',
             f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
             f'<text x="{PAD}" y="{PAD + 4}" font-size="13" font-weight="bold">'
             f'stage 1 (the checkpoint continued)</text>',
             f'<text x="{PAD + BOX_W + COL_GAP}" y="{PAD + 4}" font-size="13" font-weight="bold">stage 2</text>']
    top = PAD + 24
    child_y = {cid: top + i * (BOX_H + GAP) for i, cid in enumerate(s2["config_id"])}
    # parents centred on their children where they can be, never overlapping
    parent_y, floor = {}, top
    for p in parents:
        ys = [child_y[c] for c in s2.loc[s2["parent"].fillna("(no parent)") == p, "config_id"]]
        parent_y[p] = max(floor, sum(ys) / len(ys))
        floor = parent_y[p] + BOX_H + GAP
    x2 = PAD + BOX_W + COL_GAP
    for _, row in s2.iterrows():
        p = row["parent"] if isinstance(row["parent"], str) else "(no parent)"
        y1, y2 = parent_y[p] + BOX_H / 2, child_y[row["config_id"]] + BOX_H / 2
        mid = PAD + BOX_W + COL_GAP / 2
        parts.append(f'<path d="M{PAD + BOX_W},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" fill="none" '
                     f'stroke="#868e96" stroke-width="1.2"/>')
    for p in parents:
        loss = s1["best_val_loss"].get(p) if p in s1.index else None
        parts.append(_box(PAD, parent_y[p], p, f"best val loss {_fmt(loss)}", "done"))
    for _, row in s2.iterrows():
        cid = row["config_id"]
        if row["status"] == "ERROR":
            kind, end = "error", "failed"
        elif bool(row["stopped_by_asha"]):
            rung = row["asha_rung"]
            kind, end = "asha", f"stopped by ASHA at rung {int(rung)}" if rung == rung else "stopped by ASHA"
        else:
            kind, end = ("best" if cid == best else "done"), f"{int(row['epochs_run'])} epochs"
        detail = f"best val loss {_fmt(row['best_val_loss'])} · {end}"
        if by_metric:
            detail = f"{select_by} {_fmt(row[select_by])} · {detail}"
        if rungs.get(cid):
            detail += " · " + ", ".join(rungs[cid])
        parts.append(_box(x2, child_y[cid], cid, detail, kind))
    parts.append(f'<text x="{PAD}" y="{height - PAD + 4}" font-size="11" fill="#495057">green: {legend} '
                 f'· grey, dashed: stopped by ASHA · red: failed · rK: ASHA\'s decision at rung K '
                 f'(epoch K)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_lineage_svg(table: pd.DataFrame, decisions: list[dict] | None, folder: Path,
                      select_by: str = VAL_LOSS) -> Path | None:
    svg = lineage_svg(table, decisions, select_by)
    if svg is None:
        return None
    path = Path(folder) / LINEAGE_SVG
    atomic_write_text(path, svg)
    return path
