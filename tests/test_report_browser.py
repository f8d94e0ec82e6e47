"""The report as a reader sees it: ``report.html`` of a tiny run rendered in headless Chromium.

Every image must load (no broken image), the page must ask for nothing outside itself
(images are data: URIs, styles inline), lay out without a horizontal scroll bar, and its
screenshot must show something (not one flat colour). Skipped where no Chromium is
installed (Debian: ``apt-get install chromium``). A browser-free test checks what the first
rendering showed: the affinity heatmaps' row labels no longer run into the panel beside them.
"""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from branchnas.cli import main

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome",
                                               "google-chrome-stable")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium on PATH (Debian: apt-get install chromium); "
                             "the report's browser check needs one")

WIDTH = 1200  # CSS pixels of the browser window

# Headless and offline: no first-run UI, no background fetches, and any host lookup fails,
# so a page that tried to reach the network would show it in the probe, not hang.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--disable-dev-shm-usage",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]

# Appended to a copy of the report: once everything has loaded, write what the page saw into
# the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
    right: i.getBoundingClientRect().right}));
  const svgs = [...document.querySelectorAll("svg")].map(s => ({
    width: s.getBoundingClientRect().width, points: s.querySelectorAll("g.point").length,
    titles: [...s.querySelectorAll("g.point > title")].map(t => t.textContent)}));
  const out = {images, svgs, requests: performance.getEntriesByType("resource").map(e => e.name),
               scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
               scrollHeight: document.documentElement.scrollHeight};
  const pre = document.createElement("pre");
  pre.id = "branchnas-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """report.html of a tiny two-task run (one budget, the shared baseline)."""
    root = tmp_path_factory.mktemp("report-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRANCHNAS_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))
        assert main(["run", "--out", str(root / "run"), "--profile", "tiny", "--tasks", "semseg",
                     "depth", "--budgets", "0.6M", "--baselines", "shared", "--progress", "false",
                     "--threads", "1"]) == 0
    return root / "run" / "report.html"


@pytest.fixture(scope="module")
def seen(report, tmp_path_factory):
    """What Chromium saw of the report (one load for every test)."""
    if CHROMIUM is None:
        pytest.skip(needs_chromium.kwargs["reason"])
    return probe(report, tmp_path_factory.mktemp("probe"))


def chromium(args, tmp_path):
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def probe(page: Path, tmp_path: Path) -> dict:
    """What the browser saw of ``page``: its images, the requests it made, its size."""
    copy = tmp_path / "probed.html"
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    copy.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(["--dump-dom", copy.as_uri()], tmp_path)
    found = re.search(r'<pre id="branchnas-probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: the page did not finish loading\n" + dom[-1000:]
    return json.loads(html.unescape(found.group(1)))


class _References(HTMLParser):
    """Every URL-valued attribute and every CSS url(...) of a page."""

    ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background"}

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.ATTRS and value is not None:
                self.urls.append(value.strip())
            if name == "style" and value:
                self.urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", value)

    def handle_data(self, data):  # <style> blocks
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", data)


def test_report_references_only_inline_content(report):
    refs = _References()
    refs.feed(report.read_text(encoding="utf-8"))
    outside = [u[:80] for u in refs.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert refs.urls and not outside


@needs_chromium
def test_report_in_headless_chromium_loads_every_image_and_nothing_else(report, seen):
    n_img = report.read_text(encoding="utf-8").count("<img ")
    assert n_img >= 3  # affinity heatmaps, affinity vs depth, the Pareto plot
    assert len(seen["images"]) == n_img
    broken = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"broken images: {broken}"
    assert all(i["alt"] for i in seen["images"])  # a reader without images learns what is missing
    assert seen["requests"] == []  # data: URIs only; nothing fetched from disk or network
    assert seen["scrollWidth"] <= seen["innerWidth"], "the page scrolls sideways"
    assert all(i["right"] <= seen["innerWidth"] for i in seen["images"])
    # the interactive Pareto plot: drawn, one point per model, the tree in the tooltip
    (svg,) = seen["svgs"]
    assert 0 < svg["width"] <= seen["innerWidth"] and svg["points"] == len(svg["titles"]) == 3
    tree_tip = next(t for t in svg["titles"] if t.startswith("budget-600k (tree)"))
    assert "parameters" in tree_tip and "Δm" in tree_tip and "── block 4: semseg" in tree_tip


@needs_chromium
def test_report_screenshot_is_not_blank(report, seen, tmp_path):
    from matplotlib.image import imread

    height = min(seen["scrollHeight"], 6000)
    png = tmp_path / "report.png"
    chromium([f"--screenshot={png}", f"--window-size={WIDTH},{height}", report.as_uri()], tmp_path)
    pixels = imread(png)[..., :3]
    assert pixels.shape[:2] == (height, WIDTH)
    background = pixels[0, 0]
    drawn = np.abs(pixels - background).sum(axis=-1) > 0.05
    assert drawn.mean() > 0.05  # text, tables and plots, not an empty page
    rgb = (pixels.reshape(-1, 3) * 255).round().astype(np.int64)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 100  # the plots' colour maps, not only text on white


def test_affinity_heatmap_labels_stay_clear_of_the_next_panel(tmp_path):
    """Tick labels of one heatmap must not overlap another panel (seen in the first
    rendering: each panel's row labels were drawn over the panel on its left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from branchnas.affinity import affinity_heatmap_data, plot_affinity_heatmaps
    from branchnas.pipeline.recommend import shipped_affinity_dir

    for n_tasks in (2, 5):
        data = affinity_heatmap_data(shipped_affinity_dir() / "scenes.npz")
        data["tasks"] = data["tasks"][:n_tasks]
        data["matrices"] = [[row[:n_tasks] for row in m[:n_tasks]] for m in data["matrices"]]
        axes = plot_affinity_heatmaps(data)
        fig = axes[0].figure
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            panels = fig.axes  # the heatmaps and the colour bar
            for ax in axes:
                labels = [t for t in ax.get_yticklabels() + ax.get_xticklabels() if t.get_text()]
                assert labels or ax is not axes[0]
                for label in labels:
                    box = label.get_window_extent(renderer)
                    for other in panels:
                        if other is not ax:
                            assert not box.overlaps(other.get_window_extent(renderer)), (
                                n_tasks, label.get_text(), ax.get_title())
            assert [t.get_text() for t in axes[0].get_yticklabels()] == data["tasks"]
        finally:
            plt.close(fig)


def test_pareto_svg_places_points_and_carries_their_trees():
    import xml.etree.ElementTree as ET

    from branchnas.pipeline.pareto_svg import pareto_svg

    points = [{"model": "single", "name": "single-task", "params": 4000, "delta_m": 0.0,
               "delta_m_all": 0.0},
              {"model": "shared", "name": "shared", "params": 1000, "delta_m": -5.0,
               "delta_m_all": -4.0},
              {"model": "tree", "name": "t1", "params": 2000, "delta_m": 2.5, "delta_m_all": None}]
    data = {"column": "delta_m", "points": points, "front": ["shared", "t1"], "path": []}
    svg = ET.fromstring(pareto_svg(data, {"t1": "input\n└── block 1: a, b"}))  # well-formed XML
    groups = svg.findall("g[@class='point']")
    assert [g.find("title").text.split(" (")[0] for g in groups] == ["single-task", "shared", "t1"]
    t1 = groups[2].find("title").text
    assert "Δm +2.50%" in t1 and "all metrics" not in t1 and t1.endswith("└── block 1: a, b")

    def centre(g):
        shape = g[1]
        if shape.tag == "circle":
            return float(shape.get("cx")), float(shape.get("cy"))
        if shape.tag == "rect":
            return (float(shape.get("x")) + float(shape.get("width")) / 2,
                    float(shape.get("y")) + float(shape.get("height")) / 2)
        xy = np.array([[float(v) for v in pt.split(",")] for pt in shape.get("points").split()])
        return tuple((xy.min(0) + xy.max(0)) / 2)

    (xs, ys), (xh, yh), (xt, yt) = map(centre, groups)
    assert xh < xt < xs  # log axis: 1000 < 2000 < 4000 parameters, left to right
    assert (xt - xh) == pytest.approx(xs - xt, abs=0.2)  # equal ratios, equal distances
    assert yt < ys < yh  # higher Δm is higher up (smaller y)
