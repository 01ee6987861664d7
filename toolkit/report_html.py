"""`toolkit report`: one self-contained HTML page of a campaign, to read in any browser or attach.

The page holds the submitted manifest, exp4.compare's class matrix and survival curves, every
experiment's figures with a one-line caption each (the `CAPTIONS` of the experiment's figures
module, see toolkit/experiments/figsave.py), the run table (click a header to sort), the failed
tasks with their messages, and the provenance of the runs (devices, library versions, container
images).  Figures are embedded as base64 PNG data URIs and the sorting is a few lines of inline
JavaScript: the page loads nothing from anywhere, and its Content-Security-Policy forbids it to.

The last gather of `toolkit submit` writes it next to the figures (`figures/report.html`).
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.store.campaign_dir import CampaignDir
    from toolkit.store.reader import RunView, Store

REPORT_NAME = "report.html"
SUMMARY_EXPERIMENT = "exp4.compare"  # its figures are the campaign's class matrix and survival curves

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
figure{display:inline-block;vertical-align:top;margin:.5em;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;max-width:60em}
table{border-collapse:collapse;font-size:.8em}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}
th.sort{cursor:pointer;background:#eee}th.sort:hover{background:#ddd}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.failed{color:#a00}.scroll{overflow-x:auto;max-width:100%}
"""

# Click a header of a `table.sortable` to sort by that column (numbers as numbers), again to reverse.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.classList.add("sort");
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = Number(x), ny = Number(y);
        var c = (x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny)) ? nx - ny : (x < y ? -1 : x > y ? 1 : 0);
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def default_path(campaign_dir: Path) -> Path:
    """Where the report goes unless told otherwise: next to the figures (`<campaign>/figures/report.html`)."""
    from toolkit.store.campaign_dir import CampaignDir

    return CampaignDir(campaign_dir).figures_dir / REPORT_NAME


def write_report(campaign_dir: Path, out: Path | None = None, figures_dir: Path | None = None) -> Path:
    """Write the campaign's HTML report to `out` (default `default_path`) atomically; return the path.

    `figures_dir`: embed the figures already drawn there (the end of `toolkit submit`, which has just
    drawn them); None draws them from the store into a temporary folder, so the page never shows a
    figure older than the store."""
    from toolkit.store.files import atomic_write_text

    out = Path(out) if out is not None else default_path(campaign_dir)
    if figures_dir is not None:
        page = render(campaign_dir, figures_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="toolkit-report-") as scratch:
            from toolkit.figures import make_figures

            has_store = _layout(campaign_dir).store_path.exists()
            if has_store:
                make_figures(campaign_dir, Path(scratch))
            page = render(campaign_dir, Path(scratch))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


def render(campaign_dir: Path, figures_dir: Path) -> str:
    """The report page (a complete HTML document) of `campaign_dir`, embedding the PNGs of `figures_dir`."""
    layout = _layout(campaign_dir)
    failures = layout.failed_tasks()
    plan_tasks = layout.read_plan()["tasks"] if layout.has_plan() else {}
    manifest = layout.manifest_text()
    body: list[str] = []
    if layout.store_path.exists():
        with layout.open_store() as store:
            runs = store.runs()
            title = str(store.attrs.get("campaign", layout.root.name))
            manifest = str(store.attrs.get("manifest", manifest))
            body.append(_header(title, store.attrs, len(runs), len(failures)))
            body.append(_section("Manifest", f'<pre id="manifest-text">{_e(manifest)}</pre>'))
            summary = [r for r in runs if r.experiment == SUMMARY_EXPERIMENT]
            body.append(_section("Classes and survival", _figures(summary, figures_dir, summaries=True), "summary"))
            others = [r for r in runs if r.experiment != SUMMARY_EXPERIMENT]
            body.append(_section("Figures", _figures(others, figures_dir), "gallery"))
            body.append(_section("Runs", _run_table(store), "runs"))
            body.append(_section("Failures", _failures(failures, plan_tasks), "failures"))
            body.append(_section("Provenance", _provenance(runs), "provenance"))
    else:
        title = layout.root.name
        body.append(f"<h1>Campaign {_e(title)}</h1><p>No store yet: no task has been gathered.</p>")
        body.append(_section("Manifest", f'<pre id="manifest-text">{_e(manifest)}</pre>'))
        body.append(_section("Failures", _failures(failures, plan_tasks), "failures"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<link rel="icon" href="data:,">'
        f"<title>toolkit report: {_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def _layout(campaign_dir: Path) -> CampaignDir:
    from toolkit.store.campaign_dir import CampaignDir

    return CampaignDir(campaign_dir)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, content: str, anchor: str = "") -> str:
    ident = anchor or title.lower()
    return f'<section id="{ident}"><h2>{_e(title)}</h2>\n{content}\n</section>'


def _header(title: str, attrs: Mapping[str, Any], n_runs: int, n_failed: int) -> str:
    failed = f', <span class="failed">{n_failed} failed task(s)</span>' if n_failed else ""
    return (
        f"<h1>Campaign {_e(title)}</h1>\n<p>{n_runs} stored run(s){failed}; store created "
        f"{_e(attrs.get('created_utc', '?'))}, updated {_e(attrs.get('updated_utc', '?'))}; "
        f"toolkit {_e(attrs.get('toolkit_version', '?'))}, store schema {_e(attrs.get('schema_version', '?'))}.</p>"
    )


# -- figures -------------------------------------------------------------------------------------


def figure_name(path: Path, task_id: str) -> str | None:
    """The figure's name in `<name>_<task_id>[_<part>].png` (figsave's naming rule), or None if
    the file is not a figure of that task."""
    stem = path.stem
    marker = f"_{task_id}"
    if path.suffix != ".png" or marker not in stem:
        return None
    name, rest = stem.split(marker, 1)
    return name if name and (rest == "" or rest.startswith("_")) else None


def _figures(runs: Sequence[RunView], figures_dir: Path, summaries: bool = False) -> str:
    """Each run's figures (sorted by file name) with their captions, one block per run."""
    from toolkit.experiments import figsave

    files = sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else []
    blocks: list[str] = []
    for run in runs:
        captions = figsave.captions(run.experiment)
        mine = [(p, n) for p in files if (n := figure_name(p, run.task_id)) is not None]
        items = [_figure(path, captions.get(name, name), run) for path, name in mine]
        text = run.attrs.get("summary") if summaries else None
        if not items and not text:
            continue
        head = f"<h3>{_e(run.experiment)} <code>{_e(run.exp_id)}</code> — {_e(run.label())} ({_e(run.task_id)})</h3>"
        blocks.append(head + (f"<pre>{_e(text)}</pre>" if text else "") + "".join(items))
    return "\n".join(blocks) or "<p>No figures.</p>"


def _figure(path: Path, caption: str, run: RunView) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(path.name)}">'
        f"<figcaption>{_e(caption)} <small>[{_e(path.name)}]</small></figcaption></figure>"
    )


# -- tables --------------------------------------------------------------------------------------


def run_rows(store: Store) -> tuple[list[str], list[list[object]]]:
    """The run table's columns and rows as shown: `toolkit.store.tables.run_table`'s identity,
    status, times, device and image columns and every `numerics.*` and `params.*` column (the
    `provenance.*` columns are summarised in the provenance section instead); NA shown empty."""
    from toolkit.store.tables import run_table

    frame = run_table(store)
    keep = [str(c) for c in frame.columns if not str(c).startswith("provenance.")]
    shown = frame[keep].astype(object)
    shown = shown.where(shown.notna(), "")
    return keep, [list(row) for row in shown.itertuples(index=False)]


def _table(columns: Sequence[str], rows: Iterable[Sequence[object]], ident: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    table = f'<table class="sortable" id="{ident}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _run_table(store: Store) -> str:
    from toolkit.errors import UsageError

    try:
        columns, rows = run_rows(store)
    except UsageError as err:  # pandas is the `tables` extra; the rest of the report needs none
        return f"<p>No run table: {_e(err)}.</p>"
    note = "<p>Click a column header to sort by it; click again to reverse.</p>"
    return note + _table(columns, rows, "run-table")


def _failures(failures: Mapping[str, Mapping[str, Any]], plan_tasks: Mapping[str, Mapping[str, Any]]) -> str:
    """One entry per failed task: its experiment and id (from plan.json), the error, the traceback."""
    if not failures:
        return "<p>No failed task.</p>"
    items = []
    for task_id, report in sorted(failures.items()):
        task = plan_tasks.get(task_id, {})
        what = f"{task.get('experiment', '?')} {task.get('exp_id', '')}".strip() if task else "not in plan.json"
        trace = report.get("traceback")
        items.append(
            f"<li><code>{_e(task_id)}</code> ({_e(what)}, {_e(report.get('utc', '?'))}): "
            f'<span class="failed">{_e(report.get("error", "?"))}</span>'
            + (f"<details><summary>traceback</summary><pre>{_e(trace)}</pre></details>" if trace else "")
            + "</li>"
        )
    return f'<ul id="failure-list">{"".join(items)}</ul>'


PROVENANCE_COLUMNS = (
    "device_name",
    "sm_count",
    "compute_capability",
    "driver",
    "cuda_runtime",
    "node",
    "python",
    "toolkit",
    "torch",
    "transformers",
    "numpy",
    "git_sha",
    "container_runtime",
    "image",
    "image_digest",
)


def _provenance(runs: Sequence[RunView]) -> str:
    """Distinct (device, node, versions, image) combinations and how many runs had each."""
    counts: dict[tuple[object, ...], int] = {}
    for run in runs:
        prov = run.attrs.get("provenance", {})
        versions, container = prov.get("versions") or {}, prov.get("container") or {}
        facts = {**{k: prov.get(k) for k in PROVENANCE_COLUMNS}, **{k: versions.get(k) for k in versions}}
        facts["node"] = (prov.get("slurm") or {}).get("slurmd_nodename") or prov.get("host")
        facts["container_runtime"] = container.get("runtime")
        facts["image"], facts["image_digest"] = container.get("image"), container.get("image_digest")
        key = tuple(facts.get(k) for k in PROVENANCE_COLUMNS)
        counts[key] = counts.get(key, 0) + 1
    rows = [["" if v is None else v for v in key] + [n] for key, n in sorted(counts.items(), key=str)]
    return _table([*PROVENANCE_COLUMNS, "runs"], rows, "provenance-table")
