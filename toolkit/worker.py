"""Runs tasks inside a job: load the model once per numerics setting, run each experiment, write
one shard per task.  Called by submitit in a fresh process (local subprocess or Slurm array)."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from toolkit.context import Inputs, RunContext
from toolkit.errors import ModelError
from toolkit.manifest import ModelSpec, Numerics
from toolkit.plan import Task
from toolkit.store.campaign_dir import CampaignDir, PlanFile
from toolkit.store.checkpoint import Checkpoint
from toolkit.store.shard import open_shard
from toolkit.worker_exit import install as _install_fast_exit

_install_fast_exit()  # at import, before torch & co. register their exit handlers (it runs after theirs)

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_plan_file(campaign_dir: Path) -> PlanFile:
    """The `plan.json` written at submission: tasks, model spec and prompts."""
    return CampaignDir(campaign_dir).read_plan()


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _interrupt_once(fn: _Fn) -> _Fn:
    """While `fn` runs, the first SIGINT (Ctrl-C) raises KeyboardInterrupt and later ones are
    ignored, so the cleanup it starts (removing the half-written shard) is not cut short by the
    next SIGINT (submitit's local controller forwards one of its own); restored afterwards."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)

        def interrupted(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, interrupted)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)

    return wrapper  # type: ignore[return-value]


@_interrupt_once
def run_tasks(campaign_dir: str, task_ids: list[str], force: bool = False) -> list[str]:
    """Run the given tasks in order, skipping those already published; returns the ids run.

    Each task runs under its lock (`shards/.<task_id>.lock`): a worker of a second submit waits
    for the one running it, then skips it once published, so no task runs twice at once.

    A failing task is recorded in its `.failed.json` and the remaining tasks still run; the job
    fails at the end if any task failed, so the scheduler sees it.
    """
    folder = Path(campaign_dir)
    plan = load_plan_file(folder)
    model_spec = ModelSpec(**plan["model"])
    prompts = tuple(plan["prompts"])
    models = _ModelCache(model_spec)
    ran, failed = [], []
    for task_id in task_ids:
        task = Task.from_json(plan["tasks"][task_id])
        with CampaignDir(folder).task_lock(task_id) as lock:  # waits while another worker runs this task
            if task_id in CampaignDir(folder).completed_shards() and (not force or lock.waited):
                continue
            try:
                run_one(folder, task, models, prompts, plan["model_identity"])
                ran.append(task_id)
                print(f"task {task_id} ({task.label()}): published", flush=True)
            except Exception as err:  # recorded in the .failed.json by open_shard
                print(f"task {task_id} ({task.label()}) failed: {type(err).__name__}: {err}", file=sys.stderr)
                failed.append(task_id)
    if failed:
        raise RuntimeError(f"{len(failed)} task(s) failed: {', '.join(failed)}; see shards/<id>.failed.json")
    return ran


def run_one(
    folder: Path, task: Task, models: _ModelCache, prompts: tuple[str, ...], model_identity: dict[str, Any]
) -> None:
    """Run one task and publish its shard."""
    from toolkit import experiments
    from toolkit.manifest.params import build_params
    from toolkit.store import provenance
    from toolkit.store.reader import Store
    from toolkit.store.writer import CheckedGroup

    module = experiments.get(task.experiment)
    params = build_params(module.Params, _as_yaml_values(task.params), (), _raise)
    _check_device(folder, task, models.spec)  # before loading: a wrong card stores nothing
    from toolkit.models import numerics as numerics_flags

    try:
        if module.NEEDS_MODEL:  # before loading: an attention this machine cannot run, in one line
            numerics_flags.check_runnable(task.numerics, _resolve(models.spec.device))
        model, tokenizer, device, flags = models.get(task.numerics, module.NEEDS_MODEL)
    except ModelError as err:  # cannot load, or does not fit (toolkit.models.fit): before any shard
        from toolkit.store.shard import record_failure

        record_failure(folder, task.task_id, err)
        raise
    store = Store(CampaignDir(folder).store_path) if task.inputs else None
    attrs = {
        "experiment": task.experiment,
        "exp_id": task.exp_id,
        "target": task.target,
        "repeat": task.repeat,
        "params": task.params,
        "numerics": task.numerics.to_dict(),
        # The label with every non-default key (`float32/eager/kv/batch_size=4`): readers below the
        # manifest layer name runs by it without knowing the defaults.
        "numerics_label": task.numerics.label(),
        "model": model_identity,
        "inputs": list(task.inputs),
        "provenance": {**provenance.collect(device, flags), **_device_identity(device)},
    }
    checkpoint = Checkpoint(folder, task.task_id)
    reads = tuple(module.READS) + tuple(getattr(module, "READS_OPTIONAL", ()))
    try:
        with open_shard(folder, task.task_id, attrs) as shard:
            out = CheckedGroup.for_experiment(shard, task.experiment, module.STORES, getattr(module, "DIMS", None))
            ctx = RunContext(
                task=task,
                model=model,
                tokenizer=tokenizer,
                device=device,
                numerics=task.numerics,
                prompts=prompts,
                inputs=Inputs(store, task.inputs, task.experiment, reads),
                out=out,
                checkpoint=checkpoint,
                models=_TaskModels(models, task.numerics, model),
                chat_template=models.spec.chat_template,
            )
            with numerics_flags.attention_context(task.numerics):  # the SDPA backend an sdpa_* variant forces
                module.run(ctx, params)
        checkpoint.clear()
    finally:
        models.release_extras()
        if store is not None:
            store.close()


def _resolve(device: str) -> Any:
    from toolkit.models.loading import resolve_device

    return resolve_device(device)


def _check_device(folder: Path, task: Task, spec: ModelSpec) -> None:
    """Fail the task, recorded in its `.failed.json`, when its target's device promise (site
    profile `device` / `expect`, `toolkit.models.device`) does not hold here."""
    from toolkit.errors import ToolkitError
    from toolkit.models import device as devices
    from toolkit.models.loading import resolve_device
    from toolkit.store.shard import record_failure

    if not devices.applies_here(task.target_device):
        return
    try:
        devices.check(task.target_device, _observe(str(resolve_device(spec.device))), spec.device)
    except ToolkitError as err:
        record_failure(folder, task.task_id, err)
        raise


@functools.lru_cache(maxsize=4)
def _observe(device: str) -> Any:
    from toolkit.models import device as devices

    return devices.observe(device)


def _device_identity(device: Any) -> dict[str, Any]:
    """`device_identity` for provenance: SKU, SMs, driver, CUDA, cuBLAS, torch (or the CPU's)."""
    return {} if device is None else {"device_identity": _observe(str(device)).identity}


def _as_yaml_values(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _raise(path: tuple[Any, ...], message: str) -> None:
    raise ValueError(f"params.{'.'.join(map(str, path))}: {message}")


class _ModelCache:
    """One loaded model per (dtype, attention loaded, weights format) in this process
    (`toolkit.models.numerics.model_key`), plus the extra copies a task asks for through
    `ctx.models` (other numerics of the same weights), freed when the task ends."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loaded: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self.extras: dict[tuple[str, str, str], PreTrainedModel] = {}

    def _load(self, numerics: Numerics) -> tuple[Any, Any, Any]:
        from toolkit.models import fit, loading
        from toolkit.models import numerics as numerics_flags

        fit.check_model_fits(self.spec, numerics.dtype)  # one line, not an out-of-memory crash
        model, tokenizer, device = loading.load(self.spec, numerics_flags.load_numerics(numerics))
        numerics_flags.cast_weights(model, numerics)
        return model, tokenizer, device

    def extra(self, numerics: Numerics) -> PreTrainedModel:
        """The model under `numerics`, loaded once for the running task (see `release_extras`)."""
        from toolkit.models import numerics as numerics_flags

        key = numerics_flags.model_key(numerics)
        if key not in self.extras:
            self.extras[key] = self._load(numerics)[0]
        return self.extras[key]

    def release_extras(self) -> None:
        """Free the extra copies loaded for the task that just ended."""
        self.extras.clear()

    def get(self, numerics: Numerics, needs_model: bool) -> tuple[Any, Any, Any, dict[str, Any]]:
        from toolkit.models import numerics as numerics_flags

        flags = numerics_flags.apply(numerics)
        if not needs_model:
            return None, None, None, flags
        key = numerics_flags.model_key(numerics)
        if key not in self.loaded:
            self.loaded.clear()
            self.loaded[key] = self._load(numerics)
        model, tokenizer, device = self.loaded[key]
        return model, tokenizer, device, flags


class _TaskModels:
    """`ctx.models` of one task: its own model for its own (dtype, attention, weights), else an
    extra copy from the worker's cache (`toolkit.context.Models`)."""

    def __init__(self, cache: _ModelCache, numerics: Numerics, model: PreTrainedModel | None) -> None:
        self.cache = cache
        self.numerics = numerics
        self.model = model

    def get(self, numerics: Numerics | Mapping[str, Any]) -> PreTrainedModel:
        """The model under `numerics` (a `Numerics` or a stored run's numerics dict)."""
        from toolkit.models import numerics as numerics_flags

        wanted = numerics if isinstance(numerics, Numerics) else Numerics(**numerics)
        if self.model is not None and numerics_flags.model_key(wanted) == numerics_flags.model_key(self.numerics):
            return self.model
        return self.cache.extra(wanted)
