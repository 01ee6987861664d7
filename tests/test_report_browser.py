"""`toolkit report` (toolkit/report_html.py) on a real tiny campaign, and the page in a real browser.

One campaign (exp4.generate on two targets × two repeats, exp4.compare) is submitted on the local
executor; its last gather writes figures/report.html.  The HTML is read back with the standard
library's parser (independent of the code that wrote it), and the page is loaded in headless
Chromium from Debian's packages: no console error, every image decodes, the run table sorts on a
header click, and a screenshot is saved under the test's tmp folder.  Marked `browser`: mandatory
under CI=true (tests/ci_guard.py), like the Slurm and container suites.
"""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser_helpers import DevTools, headless_chromium, load, screenshot
from conftest import TINY_MANIFEST, Campaign, run_cli, submit_campaign

pytestmark = pytest.mark.browser

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a report holds: every src/href, the embedded images, captions, the manifest text, the
    run table and the failure list (text with character references resolved)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[bytes] = []
        self.captions: list[str] = []
        self.tags: list[str] = []
        self.text: dict[str, str] = {}  # element id -> its text
        self.rows: list[list[str]] = []
        self.header: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the open elements
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "img" and (found.get("src") or "").startswith("data:image/png;base64,"):
            self.images.append(base64.b64decode(str(found["src"]).split(",", 1)[1]))
        if tag not in ("img", "meta", "link", "br"):
            self._open.append((tag, found.get("id")))
        if tag in ("td", "th") and self._inside("run-table"):
            self._cell = []
        if tag == "tr" and self._inside("run-table") and self.header:
            self.rows.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            (self.rows[-1] if tag == "td" else self.header).append("".join(self._cell))
            self._cell = None
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, ident in self._open:
            if ident:
                self.text[ident] = self.text.get(ident, "") + data
        if self._open and self._open[-1][0] == "figcaption":
            self.captions.append(data.strip())

    def _inside(self, ident: str) -> bool:
        return any(i == ident for _, i in self._open)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    return submit_campaign(tmp_path_factory.mktemp("report"), TINY_MANIFEST, campaign="tiny", tokens=4)


def test_the_last_gather_writes_one_self_contained_report(campaign: Campaign) -> None:
    from toolkit.experiments.exp4 import figures

    report = campaign.folder / "figures" / "report.html"
    assert f"report: {report}\n" in campaign.result.out
    page = Page(report.read_text())
    assert all(link.startswith("data:") for link in page.links), page.links
    assert "iframe" not in page.tags and "object" not in page.tags
    # the figures of the campaign, embedded byte for byte: the 4 generate margins, matrix, survival
    drawn = sorted(p.read_bytes() for p in (campaign.folder / "figures").glob("*.png"))
    assert len(drawn) == 6 and sorted(page.images) == drawn
    assert all(image.startswith(PNG) for image in page.images)
    captions = [c for c in page.captions if c]
    assert len(captions) == 6
    for name, count in (("compare_matrix", 1), ("compare_survival", 1), ("generate_margins", 4)):
        assert sum(c.startswith(figures.CAPTIONS[name]) for c in captions) == count
    assert page.text["manifest-text"] == campaign.manifest.read_text()
    with campaign.store() as store:
        ids = store.task_ids()
        runs = {r.task_id: r for r in store.runs()}
    assert page.header[:5] == ["task_id", "experiment", "exp_id", "target", "repeat"]
    assert "numerics.dtype" in page.header and "params.max_new_tokens" in page.header
    assert sorted(row[0] for row in page.rows) == ids and len(ids) == 5
    for row in page.rows:
        cell = dict(zip(page.header, row))
        run = runs[cell["task_id"]]
        assert (cell["experiment"], cell["target"], cell["repeat"]) == (run.experiment, run.target, str(run.repeat))
        assert cell["status"] == "complete"
    assert page.text["failures"].endswith("No failed task.\n")


def test_report_cli(campaign: Campaign, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "page.html"
    result = run_cli("report", str(campaign.folder), "--out", str(out))
    assert (result.code, result.out, result.err) == (0, f"{out}\n", "")
    # figures drawn again from the store into a temporary folder: the same page, byte for byte
    assert out.read_bytes() == (campaign.folder / "figures" / "report.html").read_bytes()
    missing = tmp_path / "nowhere"
    result = run_cli("report", str(missing))
    assert result.code == 2
    assert result.err == (
        f"error: {missing}: no such campaign folder; give the folder toolkit submit made (<output>/<campaign>)\n"
    )
    result = run_cli("report", str(tmp_path))
    assert (result.code, result.err) == (
        2,
        f"error: {tmp_path}: not a campaign folder (no plan.json); submit a manifest first\n",
    )
    result = run_cli("report", "--help")
    assert result.code == 0 and "self-contained HTML" in result.out and "--out" in result.out


def test_a_campaign_without_a_store_reports_its_manifest_and_failures(campaign: Campaign, tmp_path: Path) -> None:
    """Every task failed before a gather: the page says so and still shows what failed."""
    from toolkit.report_html import write_report
    from toolkit.store.shard import record_failure

    for name in ("plan.json", "manifest.yaml"):
        shutil.copy(campaign.folder / name, tmp_path / name)
    task_id = sorted(json.loads((tmp_path / "plan.json").read_text())["tasks"])[0]
    (tmp_path / "shards").mkdir()  # made by campaign.prepare before any task runs
    record_failure(tmp_path, task_id, RuntimeError("out of memory"))
    text = write_report(tmp_path).read_text()
    assert (tmp_path / "figures" / "report.html").read_text() == text
    assert "<p>No store yet: no task has been gathered.</p>" in text
    page = Page(text)
    assert page.text["manifest-text"] == (campaign.folder / "manifest.yaml").read_text()
    assert (
        f"{task_id} (exp4." in page.text["failure-list"]
        and "): RuntimeError: out of memory" in page.text["failure-list"]
    )
    assert page.images == [] and page.rows == []


def _check_page(tools: DevTools, rows: int, images: int) -> None:
    assert tools.console_errors() == []
    widths = tools.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(widths) == images and all(done and width > 0 for done, width in widths), widths
    column = "Array.from(document.querySelectorAll('#run-table tbody tr')).map(r => r.cells[{}].textContent)"
    ids = tools.evaluate(column.format(0))
    assert len(ids) == rows
    tools.evaluate("document.querySelectorAll('#run-table th')[0].click()")
    assert tools.evaluate(column.format(0)) == sorted(ids)
    tools.evaluate("document.querySelectorAll('#run-table th')[0].click()")
    assert tools.evaluate(column.format(0)) == sorted(ids, reverse=True)
    tools.evaluate("document.querySelectorAll('#run-table th')[4].click()")  # repeat: numbers
    repeats = tools.evaluate(column.format(4))
    assert repeats == sorted(repeats, key=int) and len(set(repeats)) == 2


def test_the_report_in_headless_chromium(campaign: Campaign, tmp_path: Path) -> None:
    """A failed task is added (written by the worker's own failure recorder) so the page shows
    every section; the screenshot is tmp_path/report.png."""
    from toolkit.report_html import write_report
    from toolkit.store.shard import record_failure

    folder = tmp_path / "tiny"
    shutil.copytree(campaign.folder, folder, ignore=shutil.ignore_patterns("jobs"))
    record_failure(folder, "0123456789abcdef", ValueError("<b>no</b> & 'stop'"))
    out = write_report(folder, tmp_path / "report.html", figures_dir=folder / "figures")  # as submit does
    page = Page(out.read_text())
    assert "b" not in page.tags  # the message is text, not markup
    assert "0123456789abcdef (not in plan.json, " in page.text["failure-list"]
    assert "): ValueError: <b>no</b> & 'stop'traceback" in page.text["failure-list"]

    with headless_chromium(tmp_path / "profile") as tools:
        load(tools, out)
        _check_page(tools, rows=5, images=6)
        width, height = screenshot(tools, tmp_path / "report.png")
        assert (tmp_path / "report.png").read_bytes().startswith(PNG) and width > 0 and height > 0

        # the checks can fail: a console error, a blocked network image and a broken image are seen
        bad = tmp_path / "bad.html"
        bad.write_text(
            out.read_text().replace(
                "</body>",
                '<img src="data:image/png;base64,AAAA"><img src="http://127.0.0.1:9/x.png">'
                '<script>console.error("broken on purpose")</script></body>',
            )
        )
        load(tools, bad)
        errors = tools.console_errors()
        assert any("broken on purpose" in e for e in errors), errors
        assert any("127.0.0.1:9/x.png" in e and "Content Security Policy" in e for e in errors), errors
        widths = tools.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert len(widths) == 8 and widths[-2:] == [0, 0]


def _figure_names(module_file: Path) -> set[str]:
    """The literal figure names a figures module saves: `save_figure(fig, out_dir, NAME, ...)` and
    exp7's `map_figure(run, key, out_dir, NAME, ...)`, read from its source with `ast`."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            at = {"save_figure": 2, "map_figure": 3}.get(node.func.id)
            if at is not None and len(node.args) > at and isinstance(node.args[at], ast.Constant):
                names.add(node.args[at].value)
    return names


def test_every_figure_name_has_a_caption() -> None:
    """Each registered experiment's figures module captions exactly the figures it saves."""
    import importlib

    from toolkit import experiments
    from toolkit.experiments import figsave

    modules = {experiments.get(name).plot.__module__: name for name in experiments.REGISTRY}
    assert len(modules) >= 8
    for module_name, experiment in modules.items():
        module = importlib.import_module(module_name)
        saved = _figure_names(Path(str(module.__file__)))
        assert saved and set(figsave.captions(experiment)) == saved, module_name
        assert all(len(caption) > 40 for caption in figsave.captions(experiment).values())
