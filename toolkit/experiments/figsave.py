"""The one way an experiment's figure is drawn and saved: headless pyplot, one dpi, one file-name rule.

Every family's `figures` module draws with `pyplot()` and saves with `save_figure(...)`, so all
figures of a campaign share one resolution and one naming rule, and each figure is closed once
it is written (a campaign plots hundreds; open figures would pile up in memory).

Naming rule: `<out_dir>/<name>_<task_id>[_<part>].png` — `name` says which figure (e.g.
`divergence_scatter`), `task_id` the stored run it is drawn from, `part` (optional) which of the
run's several figures (a prompt `p000`, a map `001`, `summary`).  The names in `docs/` and the
tests follow this rule.

Captions: the module that holds an experiment's `plot` defines `CAPTIONS`, figure name -> one line
saying what is plotted and which colour is which; `captions(experiment)` reads it for
`toolkit report`, which prints it under every figure of that name.

Not registered: a helper for the experiments' figures modules (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# 120 dots per inch: the value most figures used before (11 of 19 savefig calls; the others used
# 110 or 100), and the highest of the three, so no figure loses resolution.
DPI = 120


def pyplot() -> ModuleType:
    """`matplotlib.pyplot` on the headless Agg backend (figures are made on login and compute nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_path(out_dir: Path, name: str, task_id: str, part: str = "") -> Path:
    """The file a figure is saved to: `<out_dir>/<name>_<task_id>[_<part>].png`."""
    return Path(out_dir) / (f"{name}_{task_id}_{part}.png" if part else f"{name}_{task_id}.png")


def save_figure(fig: Figure, out_dir: Path, name: str, task_id: str, part: str = "") -> Path:
    """Write `fig` as PNG (`DPI`, tight bounding box) under the naming rule, close it, return the path."""
    import matplotlib.pyplot as plt

    path = figure_path(out_dir, name, task_id, part)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def captions(experiment: str) -> Mapping[str, str]:
    """Figure name -> caption for a registered experiment's figures: the `CAPTIONS` of the module its
    `plot` comes from ({} for a name not in the registry or a module without captions)."""
    import importlib

    from toolkit import experiments

    if experiment not in experiments.REGISTRY:
        return {}
    module = importlib.import_module(experiments.get(experiment).plot.__module__)
    found: Mapping[str, str] = getattr(module, "CAPTIONS", {})
    return found
