"""Figures from the store only: each experiment's `plot(run, out_dir)` for each of its runs."""

from __future__ import annotations

from pathlib import Path


def make_figures(campaign_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Plot every run in `campaign_dir/store.h5` into `out_dir` (default `campaign_dir/figures`)."""
    from toolkit import experiments
    from toolkit.store.campaign_dir import CampaignDir

    folder = CampaignDir(campaign_dir)
    out_dir = out_dir or folder.figures_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with folder.open_store() as store:
        for run in store.runs():
            if run.experiment in experiments.REGISTRY:
                paths += experiments.get(run.experiment).plot(run, out_dir)
    return paths
