"""Open a report page in headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) and say what rendered:
how many tables, images and SVG figures the page has after load, which images decoded, and a screenshot in which
each image's box can be checked for non-blank pixels.

    python -m tests.browser runs/main/report.html
    python -m tests.browser runs/long/report.html --png docs/report-html.png --top 0 --height 1600   # README's
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PROBE = """<script>
window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect();  // the content box: inside any border
                     return [r.left + e.clientLeft + scrollX, r.top + e.clientTop + scrollY, e.clientWidth,
                             e.clientHeight].map(Math.round); };
  const imgs = [...document.images];
  document.body.setAttribute('data-probe', JSON.stringify({
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tr').length,
    images: imgs.map(i => ({src: i.getAttribute('src').slice(0, 40), alt: i.alt,
                            decoded: i.complete && i.naturalWidth > 0, natural: [i.naturalWidth, i.naturalHeight],
                            box: box(i)})),
    height: Math.ceil(document.documentElement.scrollHeight),
    width: Math.ceil(document.documentElement.scrollWidth)}));
});
</script>"""


@dataclass
class Rendered:
    tables: int
    rows: int
    images: list[dict]
    sources: list[str]
    """Each ``<img>``'s full ``src``, in page order (the probe keeps only their first characters)."""
    screenshot: Image.Image

    @functools.cached_property
    def _pixels(self) -> np.ndarray:
        return np.asarray(self.screenshot.convert("RGB"), dtype=np.float32)

    def _region(self, img: dict) -> np.ndarray:
        x, y, w, h = img["box"]
        return self._pixels[y:y + h, x:x + w]

    def blank_images(self, min_std: float = 2.0) -> list[str]:
        """The images whose box on the screenshot is one flat colour (drawn as nothing)."""
        regions = [(img, self._region(img)) for img in self.images]
        return [img["alt"] or img["src"] for img, region in regions
                if region.size == 0 or float(region.std(axis=(0, 1)).max()) < min_std]

    def unlike_their_source(self, max_mean_diff: float = 20.0) -> list[str]:
        """The raster images whose box on the screenshot does not show their own pixels (mean absolute difference
        per channel, 0-255, from the source scaled to the box)."""
        import base64
        import io

        bad = []
        for img, src in zip(self.images, self.sources):
            head, _, data = src.partition(",")
            if not head.startswith("data:image/") or "svg" in head:
                continue
            source = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
            region = self._region(img)
            scaled = np.asarray(source.resize((region.shape[1], region.shape[0]), Image.BILINEAR), dtype=np.float32)
            if float(np.abs(scaled - region).mean()) > max_mean_diff:
                bad.append(img["alt"] or img["src"])
        return bad


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("headless Chromium is not installed: apt-get install -y chromium (as .ci/run does)")
    return exe


def _run(args: list[str], timeout: int = 120) -> str:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", "--allow-file-access-from-files", "--virtual-time-budget=10000"]
    proc = subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def render(page: Path, work: Path, max_height: int = 30000) -> Rendered:
    """Load ``page`` (a copy with the probe script added) and screenshot it at its full height."""
    work.mkdir(parents=True, exist_ok=True)
    probed = work / "probed.html"
    text = page.read_text()
    probed.write_text(text.replace("</body>", PROBE + "\n</body>", 1))
    dom = _run(["--window-size=1400,1000", "--dump-dom", probed.as_uri()])
    m = re.search(r"data-probe=\"([^\"]*)\"", dom)
    if m is None:
        raise RuntimeError(f"the page's load event never ran: {dom[:500]}")
    import html

    probe = json.loads(html.unescape(m.group(1)))
    height = min(max_height, probe["height"])
    shot = work / "page.png"
    _run([f"--window-size={max(1400, probe['width'])},{height}", f"--screenshot={shot}", probed.as_uri()])
    sources = [html.unescape(s) for s in re.findall(r'<img\s[^>]*?src="([^"]*)"', text)]
    return Rendered(probe["tables"], probe["rows"], probe["images"], sources, Image.open(shot))


def readme_screenshot(page: Path, png: Path, top: int, height: int, width: int = 900) -> Path:
    """A small PNG of ``page`` from ``top`` px down, ``height`` px tall, scaled to ``width`` px (README's figure)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shot = render(page, Path(tmp)).screenshot
        part = shot.crop((0, top, shot.width, min(shot.height, top + height)))
        part = part.resize((width, round(part.height * width / part.width)), Image.LANCZOS)
        # an octree palette keeps the sample images' saturated colours (an adaptive one greys them)
        part.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(png, optimize=True)
    return png


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="What headless Chromium renders of a report page.")
    ap.add_argument("page", type=Path)
    ap.add_argument("--png", type=Path, help="write a screenshot of part of the page here instead")
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--height", type=int, default=1600)
    args = ap.parse_args()
    if args.png:
        print(readme_screenshot(args.page, args.png, args.top, args.height))
        sys.exit()
    r = render(args.page, Path("/tmp/vlm-sweep-browser"))
    print(json.dumps({"tables": r.tables, "rows": r.rows, "images": len(r.images),
                      "undecoded": [i["alt"] for i in r.images if not i["decoded"]], "blank": r.blank_images(),
                      "unlike_their_source": r.unlike_their_source()},
                     indent=2))
