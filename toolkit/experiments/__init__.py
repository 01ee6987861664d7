"""The experiment registry: an explicit table from experiment name to the module implementing it.

Every module named here provides a frozen `Params` dataclass, `run(ctx, params)`, `plot(run,
out_dir)` and the metadata constants `PER_TARGET`, `NEEDS_MODEL`, `READS` and `STORES`.  Modules
import heavy libraries inside functions, so looking a name up is instant.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from toolkit.errors import UsageError

REGISTRY: dict[str, str] = {
    "exp1.layer_svd": "toolkit.experiments.exp1.layer_svd",
    "exp2.lipschitz": "toolkit.experiments.exp2.lipschitz",
    "exp3.precision": "toolkit.experiments.exp3.precision",
    "exp3.compare": "toolkit.experiments.exp3.compare",
    "exp5.module_lipschitz": "toolkit.experiments.exp5.module_lipschitz",
    "exp4.generate": "toolkit.experiments.exp4.generate",
    "exp4.compare": "toolkit.experiments.exp4.compare",
    "exp4.divergence": "toolkit.experiments.exp4.divergence",
    "exp4.internals": "toolkit.experiments.exp4.internals",
    "exp4.perturb_until_divergence": "toolkit.experiments.exp4.perturb_until_divergence",
    "exp4.embedding_similarity": "toolkit.experiments.exp4.embedding_similarity",
    "exp6.equal_logits": "toolkit.experiments.exp6.equal_logits",
    "exp6.token_flip": "toolkit.experiments.exp6.token_flip",
    "exp7.heatmap": "toolkit.experiments.exp7.heatmap",
    "exp7.zoom": "toolkit.experiments.exp7.zoom",
    "exp7.randomness": "toolkit.experiments.exp7.randomness",
    "pdf.word_prediction": "toolkit.experiments.pdf.word_prediction",
}


def names() -> list[str]:
    """All registered experiment names, sorted."""
    return sorted(REGISTRY)


def suggestion(name: str) -> str:
    """A did-you-mean clause plus the list of valid names, for error messages."""
    close = difflib.get_close_matches(name, names(), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}known experiments: {', '.join(names())}"


def get(name: str) -> ModuleType:
    """The module implementing experiment `name`; `UsageError` with did-you-mean if unknown."""
    if name not in REGISTRY:
        raise UsageError(f"unknown experiment {name!r}; {suggestion(name)}")
    return importlib.import_module(REGISTRY[name])
