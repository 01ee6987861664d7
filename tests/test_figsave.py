"""toolkit/experiments/figsave.py: the one figure saver (one dpi, one naming rule, the figure closed),
every `savefig` of the package going through it, every experiment's `plot` living in its family's
`figures` module, and `RunView.sibling` (how exp7.zoom's figure reads the heatmap run it names)."""

from __future__ import annotations

import ast

import h5py
import pytest
from conftest import REPO
from PIL import Image

from toolkit import experiments
from toolkit.experiments import figsave
from toolkit.store.reader import RunView


@pytest.mark.parametrize(
    ("name", "task_id", "part", "expected"),
    [
        ("lipschitz", "0123abcd", "", "lipschitz_0123abcd.png"),
        ("layer_svd", "0123abcd", "p000", "layer_svd_0123abcd_p000.png"),
        ("exp7_zoom", "0123abcd", "001_stored", "exp7_zoom_0123abcd_001_stored.png"),
    ],
)
def test_figure_path_follows_the_naming_rule(tmp_path, name, task_id, part, expected):
    assert figsave.figure_path(tmp_path, name, task_id, part) == tmp_path / expected


def test_save_figure_writes_one_png_at_the_dpi_and_closes_the_figure(tmp_path):
    plt = figsave.pyplot()
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    path = figsave.save_figure(fig, tmp_path, "probe", "0123abcd", "p000")
    assert path == tmp_path / "probe_0123abcd_p000.png"
    assert [p.name for p in tmp_path.iterdir()] == ["probe_0123abcd_p000.png"]
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert [round(d) for d in image.info["dpi"]] == [120, 120]
    assert figsave.DPI == 120
    assert not plt.fignum_exists(fig.number)


def _savefig_calls() -> dict[str, int]:
    calls: dict[str, int] = {}
    for path in sorted((REPO / "toolkit").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        n = sum(isinstance(node, ast.Attribute) and node.attr == "savefig" for node in ast.walk(tree))
        if n:
            calls[str(path.relative_to(REPO))] = n
    return calls


def test_figsave_is_the_only_code_that_saves_a_figure():
    assert _savefig_calls() == {"toolkit/experiments/figsave.py": 1}


def test_every_plot_lives_in_its_family_figures_module():
    for name in experiments.REGISTRY:
        plot = experiments.get(name).plot
        family = name.split(".")[0]
        short = name.split(".")[1]
        # the family's figures module; an experiment whose figures would push it past ~400 lines keeps
        # them in <short>_figures beside it (exp4.census)
        assert plot.__module__ in (
            f"toolkit.experiments.{family}.figures",
            f"toolkit.experiments.{family}.{short}_figures",
        ), name
        assert plot.__name__ == f"plot_{name.split('.')[1]}", name


def test_sibling_reads_another_run_of_the_same_store_or_none(tmp_path):
    with h5py.File(tmp_path / "store.h5", "w") as f:
        f.create_group("tasks/aaaa").attrs["experiment"] = "exp7.zoom"
        f.create_group("tasks/bbbb").attrs["experiment"] = "exp7.heatmap"
        f["tasks/bbbb"].create_dataset("maps/000/gap", data=[[1.5, -2.0]])
    with h5py.File(tmp_path / "store.h5", "r") as f:
        zoom = RunView(f["tasks/aaaa"])
        heatmap = zoom.sibling("bbbb")
        assert heatmap is not None
        assert (heatmap.task_id, heatmap.experiment) == ("bbbb", "exp7.heatmap")
        assert heatmap["maps/000/gap"].tolist() == [[1.5, -2.0]]
        assert zoom.sibling("cccc") is None
