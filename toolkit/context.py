"""What an experiment's `run(ctx, params)` receives: the loaded model, inputs and its output group.

The experiment contract, typed: `RunContext` (built by the worker), `Inputs` (the one way to pick
upstream runs, `matching`), `Models` (extra models under other numerics, from the worker's cache),
`CheckedGroup` (`ctx.out`, checked against the experiment's `STORES`) and `RunView` (one stored
upstream run).  Heavy types (torch, transformers, h5py) are imported for type checking only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from toolkit.errors import ContractError, ModelError, UpstreamError
from toolkit.manifest import Numerics
from toolkit.plan import Task
from toolkit.progress import Progress
from toolkit.store.reader import RunView
from toolkit.store.writer import CheckedGroup

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from toolkit.store.checkpoint import Checkpoint
    from toolkit.store.reader import Store

__all__ = ["CheckedGroup", "Inputs", "Models", "RunContext", "RunView"]


class Models(Protocol):
    """The worker's model cache as an experiment sees it: the same weights under other numerics."""

    def get(self, numerics: Numerics | Mapping[str, Any]) -> PreTrainedModel:
        """The model under `numerics` (a `Numerics` or a stored run's numerics dict): the task's own
        model when dtype and attention agree, else a copy loaded once and freed after the task."""
        ...


class Inputs:
    """Read-only access to the upstream runs this task depends on (from store.h5).

    `consumer` is the experiment reading them and `reads` the experiments it declares (`READS` plus
    `READS_OPTIONAL`); `matching` refuses any other name, which is how the declaration is enforced.
    """

    def __init__(
        self, store: Store | None, task_ids: tuple[str, ...], consumer: str = "", reads: tuple[str, ...] | None = None
    ) -> None:
        self.store = store
        self.task_ids = task_ids
        self.consumer = consumer
        self.reads = reads

    def runs(self, experiment: str | None = None) -> list[RunView]:
        """Upstream `RunView`s, optionally filtered by experiment name, in a stable order, without
        the checks of `matching` (which experiments use) except the declared-reads one."""
        if experiment is not None:
            self._check_declared((experiment,))
        if self.store is None:
            return []
        return self.store.runs(experiment=experiment, ids=self.task_ids)

    def _check_declared(self, wanted: tuple[str, ...]) -> None:
        undeclared = [name for name in wanted if self.reads is not None and name not in self.reads]
        if undeclared:
            raise ContractError(
                f"{self.consumer or 'this experiment'} reads {', '.join(undeclared)} runs, which its "
                "READS does not declare; add them to the module's READS (or READS_OPTIONAL)"
            )

    def matching(
        self,
        experiment: str | tuple[str, ...],
        *,
        target: str | None = None,
        dtype: str | None = None,
        numerics: Numerics | None = None,
        min_runs: int = 1,
        min_distinct: int = 1,
        distinct: tuple[str, ...] = ("dtype", "attn_implementation"),
    ) -> list[RunView]:
        """The upstream runs of `experiment` (one name, or several read in the order given) that share
        `target`, `dtype` and/or all of `numerics` with this task, in a stable order.

        `UpstreamError` (exit 2) unless at least `min_runs` match and they hold at least
        `min_distinct` different values of the numerics keys `distinct`: the message says what was
        wanted, what was found, and which `needs` to fix.  `ContractError` if the consumer does not
        declare `experiment` in its `READS` / `READS_OPTIONAL`.
        """
        wanted = (experiment,) if isinstance(experiment, str) else tuple(experiment)
        self._check_declared(wanted)
        every = [run for name in wanted for run in self.runs(name)]
        found = [run for run in every if _matches(run, target, dtype, numerics)]
        kinds = {tuple(str(_numerics_of(run).get(key)) for key in distinct) for run in found}
        if len(found) >= min_runs and (len(kinds) >= min_distinct or not found):
            return found
        raise UpstreamError(
            self._refusal(
                wanted, target, dtype, numerics, min_runs, min_distinct, distinct, len(found), len(kinds), len(every)
            )
        )

    def _refusal(
        self,
        wanted: tuple[str, ...],
        target: str | None,
        dtype: str | None,
        numerics: Numerics | None,
        min_runs: int,
        min_distinct: int,
        distinct: tuple[str, ...],
        found: int,
        kinds: int,
        every: int,
    ) -> str:
        """One message for every refusal: what was wanted, what was found, which `needs` to fix."""
        names = " or ".join(wanted)
        shared = (
            ([f"target {target!r}"] if target is not None else [])
            + ([f"dtype {dtype}"] if dtype is not None else [])
            + ([f"numerics {numerics.label()}"] if numerics is not None else [])
        )
        which = f" with this task's {' and '.join(shared)}" if shared else ""
        inputs = f"its inputs hold {every} {names} run{'s' if every != 1 else ''}"
        if found == 0:
            what = f"found no {names} run{which} ({inputs})"
        elif found < min_runs:
            what = f"needs at least {min_runs} {names} runs{which}, found {found} ({inputs})"
        else:
            what = (
                f"needs {names} runs{which} with at least {min_distinct} different {' / '.join(distinct)}, "
                f"found {kinds} among {found}"
            )
        fix = f"list the id of an {names} entry under this entry's `needs`"
        if shared:
            fix += " with the same targets and numerics (or sweep them together)"
        if min_runs > 1 or min_distinct > 1:
            fix += ", swept over numerics (e.g. sweep: {dtype: [float32, bfloat16]}) or with repeats >= 2"
        return f"{self.consumer or 'this experiment'} {what}; {fix}"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool) -> torch.Tensor:
    """Token ids [1, T] of `prompt`: `tokenizer(prompt)`, or with `chat_template` the tokenizer's
    chat template around it (one user message, the generation prompt added), tokenised without
    adding special tokens (the template writes its own, so a BOS is never doubled)."""
    if not chat_template:
        return tokenizer(prompt, return_tensors="pt").input_ids
    if not tokenizer.chat_template:
        raise ModelError("model.chat_template is true but this tokenizer has no chat template; set it to false")
    message = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    return tokenizer(str(text), add_special_tokens=False, return_tensors="pt").input_ids


def _matches(run: RunView, target: str | None, dtype: str | None, numerics: Numerics | None) -> bool:
    if target is not None and run.target != target:
        return False
    if dtype is not None and run.numerics.get("dtype") != dtype:
        return False
    return numerics is None or _numerics_of(run) == numerics.to_dict()


def _numerics_of(run: RunView) -> dict[str, Any]:
    """A stored run's numerics with the keys added since it was stored at their defaults (a run
    stored before #14 has no batch_size: it ran as batch 1)."""
    return {**Numerics().to_dict(), **run.numerics}


@dataclass
class RunContext:
    """Everything an experiment may touch; it never opens files, loads models or picks devices itself.

    `model`, `tokenizer` and `device` come from the worker's cache (None for experiments that
    declare `NEEDS_MODEL = False`); `models` gives the same weights under other numerics.  `out`
    is this task's shard group, checked against the experiment's `STORES`.  `checkpoint` lets a
    long experiment save finished units of work, so a requeued task resumes instead of starting over.
    """

    task: Task
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    numerics: Numerics
    prompts: tuple[str, ...]
    inputs: Inputs
    out: CheckedGroup
    checkpoint: Checkpoint | None = None
    progress_stream: TextIO | None = None
    models: Models | None = None
    chat_template: bool = False

    def encode(self, prompt: str) -> torch.Tensor:
        """A prompt's token ids [1, T] on the task's device, as every experiment tokenises prompts:
        plainly, or with `model.chat_template` inside the tokenizer's chat template."""
        return encode_prompt(self.tokenizer, prompt, self.chat_template).to(self.device)

    def progress(self, total: int, label: str | None = None) -> Progress:
        """A progress reporter for `total` units of this task's work."""
        return Progress(total, label or f"{self.task.task_id} {self.task.label()}", stream=self.progress_stream)
