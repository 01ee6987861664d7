"""The experiment registry: an explicit table from experiment name to the module implementing it.

Every module named here satisfies `ExperimentModule` (checked for every name by
tests/test_experiment_contract.py): a frozen `Params` dataclass (every field typed), `run(ctx:
RunContext, params)`, `plot(run, out_dir)` (figures from the store, in the family's `figures`
module) and the declarations `PER_TARGET`, `NEEDS_MODEL`, `READS`, `READS_PROMPTS`,
`NEEDS_EAGER_ATTENTION` and `STORES`.  The worker enforces two of them while a task runs:
`ctx.inputs.matching` refuses an experiment missing from `READS` / `READS_OPTIONAL`, and `ctx.out`
refuses a dataset missing from `STORES` (`toolkit.store.writer`).  Modules import heavy libraries
inside functions, so looking a name up is instant.  Code shared by several experiments lives in
`toolkit/numerics/` or an unregistered module here (`checks`, `layer_sweep`), never in another
registered experiment.

Declarations that validation reads (`toolkit.manifest`), so a manifest that cannot run is refused
before anything is created rather than when a task starts.  Every module declares the first two
explicitly (a test checks it); the upstream rules are optional:

`READS_OPTIONAL`         experiments it also reads when their ids are in its `needs` (not required).
`READS_PROMPTS`          True if its tasks read the manifest's `prompts` (an empty list is refused).
`NEEDS_EAGER_ATTENTION`  True if it takes JVPs through the model (`torch.func.jvp`, which SDPA
                         attention does not support), or a function of its `Params` saying so
                         (e.g. only for some directions): `attn_implementation` must then be eager.
`HONOURS_NUMERICS`       the forward-path numerics keys (`PATH_NUMERICS`: batch composition,
                         logits path) it implements; a non-default value of another is refused
                         at validation for an experiment that runs the model (default: none).
                         The other keys (dtype, attention, weights, flags) act on the model and
                         torch's flags in the worker, so every experiment honours them.
`UPSTREAM_MIN_RUNS`      the fewest upstream runs (of its `READS`) one task needs (default 1).
`UPSTREAM_MIN_NUMERICS`  the fewest distinct numerics among them (default 1), told apart by the
                         numerics keys in `UPSTREAM_DISTINCT` (default: all of them).
`UPSTREAM_MATCH`         what an upstream run must share with the task to count: "target",
                         "dtype" and/or "numerics" (default: nothing, every input run counts).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.context import RunContext

REGISTRY: dict[str, str] = {
    "exp1.layer_svd": "toolkit.experiments.exp1.layer_svd",
    "exp2.lipschitz": "toolkit.experiments.exp2.lipschitz",
    "exp3.precision": "toolkit.experiments.exp3.precision",
    "exp3.compare": "toolkit.experiments.exp3.compare",
    "exp5.module_lipschitz": "toolkit.experiments.exp5.module_lipschitz",
    "exp4.generate": "toolkit.experiments.exp4.generate",
    "exp4.census": "toolkit.experiments.exp4.census",
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


@runtime_checkable
class ExperimentModule(Protocol):
    """What an experiment module provides (the module itself satisfies this Protocol)."""

    PER_TARGET: bool
    NEEDS_MODEL: bool
    READS: tuple[str, ...]
    READS_PROMPTS: bool
    NEEDS_EAGER_ATTENTION: bool | Callable[[Any], bool]
    STORES: Mapping[str, str]
    Params: type

    def run(self, ctx: RunContext, params: Any) -> None:
        """Compute and write the task's results through `ctx.out`."""
        ...


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


UPSTREAM_FIELDS = ("target", "dtype", "numerics")
NUMERICS_KEYS = (
    "dtype",
    "attn_implementation",
    "kv_cache",
    "tf32",
    "deterministic",
    "batch_size",
    "batch_fill",
    "batch_position",
    "padding_side",
    "logits_path",
    "weights_dtype",
    "reduced_precision_reduction",
)
# Numerics keys an experiment's own forward loop must implement (declared in HONOURS_NUMERICS).
PATH_NUMERICS = ("batch_size", "batch_fill", "batch_position", "padding_side", "logits_path")


def honours_numerics(module: ModuleType) -> frozenset[str]:
    """The `PATH_NUMERICS` keys the experiment implements (its optional `HONOURS_NUMERICS`)."""
    declared = frozenset(getattr(module, "HONOURS_NUMERICS", frozenset()))
    unknown = sorted(declared - set(PATH_NUMERICS))
    if unknown:
        raise TypeError(f"{module.__name__}: HONOURS_NUMERICS names {unknown}, not among {PATH_NUMERICS}")
    return declared


def _declared(module: ModuleType, name: str) -> Any:
    if not hasattr(module, name):  # a programming error in the module, not a user error
        raise TypeError(f"experiment module {module.__name__} does not declare {name} (see toolkit.experiments)")
    return getattr(module, name)


def reads_prompts(module: ModuleType) -> bool:
    """Whether the experiment's tasks read the manifest's prompts (its `READS_PROMPTS`)."""
    return bool(_declared(module, "READS_PROMPTS"))


def needs_eager_attention(module: ModuleType, params: Any) -> bool:
    """Whether a task with these params takes JVPs through the model (its `NEEDS_EAGER_ATTENTION`)."""
    declared = _declared(module, "NEEDS_EAGER_ATTENTION")
    return bool(declared(params) if callable(declared) else declared)


@dataclass(frozen=True)
class UpstreamRule:
    """What one task of a downstream experiment needs among its input runs (module declarations)."""

    min_runs: int = 1
    min_numerics: int = 1
    distinct: tuple[str, ...] = NUMERICS_KEYS
    match: tuple[str, ...] = ()


def upstream_rule(module: ModuleType) -> UpstreamRule:
    """The module's `UPSTREAM_*` declarations (defaults: one run of any kind)."""
    rule = UpstreamRule(
        min_runs=int(getattr(module, "UPSTREAM_MIN_RUNS", 1)),
        min_numerics=int(getattr(module, "UPSTREAM_MIN_NUMERICS", 1)),
        distinct=tuple(getattr(module, "UPSTREAM_DISTINCT", NUMERICS_KEYS)),
        match=tuple(getattr(module, "UPSTREAM_MATCH", ())),
    )
    unknown = [m for m in rule.match if m not in UPSTREAM_FIELDS] + [d for d in rule.distinct if d not in NUMERICS_KEYS]
    if unknown:
        raise TypeError(f"{module.__name__}: unknown field(s) {unknown} in its UPSTREAM_* declarations")
    return rule
