"""Shared fixtures: run the real CLI in a subprocess, write manifests, and locate the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from toolkit.context import RunContext
    from toolkit.manifest import Numerics
    from toolkit.plan import Task
    from toolkit.store.reader import Store

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["ci_guard"]  # under CI=true a skipped Slurm/container test fails the run


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900) -> Result:
    """Run `python -m toolkit.cli ARGS` in a fresh process, like a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write YAML text (dedented) to tmp_path/manifest.yaml and return its path."""

    def write(text: str, name: str = "manifest.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


TINY_MANIFEST = """\
campaign: {campaign}
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is", "Numbers: 1, 2, 3,"]
targets: [a100, h100]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: {tokens}, top_k: 5, stop_at_eos: false}}
    repeats: 2
  - name: exp4.compare
    id: compare
    needs: [generate]
"""


@pytest.fixture
def tiny_manifest(tmp_path: Path):
    """A small two-stage campaign on the tiny random Llama (seconds)."""

    def make(campaign: str = "tiny", tokens: int = 6) -> Path:
        path = tmp_path / f"{campaign}.yaml"
        path.write_text(TINY_MANIFEST.format(campaign=campaign, output=tmp_path / "campaigns", tokens=tokens))
        return path

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, restored after: many small ops gain nothing from a second
    thread, and on a machine shared with other jobs OpenMP waits made them 4-10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}

#: A shard's task attributes for tests that write shards with `open_shard` directly (no plan).
SHARD_ATTRS = {
    "experiment": "exp4.generate",
    "exp_id": "generate",
    "target": "a100",
    "repeat": 0,
    "params": {"max_new_tokens": 3},
    "numerics": {"dtype": "float32"},
}


def smollm2_embeds(prompt: str) -> tuple[Any, Any]:
    """The packaged model (float32, eager attention, CPU) and the [1, T, D] input embeddings of `prompt`."""
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, tokenizer, _ = load(
        ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return model, model.get_input_embeddings()(ids)


def grid_points(x0: Any, n: int) -> Any:
    """An n × n grid over ±1e-3 around x0 along two seeded orthonormal float64 directions."""
    import torch

    from toolkit.numerics import grid

    q, _ = torch.linalg.qr(torch.randn(x0.numel(), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    e = grid.axis_n(-1e-3, 1e-3, n)
    return grid.form_points(x0, q[:, 0], q[:, 1], e, e, "fp64_then_round")


@dataclass
class Campaign:
    """A campaign submitted by `submit_campaign`: the manifest, the CLI result and the campaign folder."""

    manifest: Path
    result: Result
    folder: Path

    @property
    def store_path(self) -> Path:
        """The campaign's gathered store.h5."""
        return self.folder / "store.h5"

    def store(self) -> Store:
        """The gathered store opened for reading (`toolkit.store.reader.Store`, a context manager)."""
        from toolkit.store.reader import Store

        return Store(self.store_path)


def submit_campaign(
    root: Path, template: str, name: str = "manifest.yaml", *, no_plot: bool = False, **fields: Any
) -> Campaign:
    """Write `template` formatted with `output=root/campaigns` (and `fields`) to root/name, submit it
    with the real CLI on the local executor (one torch thread), assert it succeeded, and return it.

    The one copy of "write a manifest, submit, open the store" for tests that check what a campaign
    wrote; pass `tmp_path`, or a `tmp_path_factory.mktemp(...)` folder for a module-scoped fixture."""
    import yaml

    text = template.format(output=root / "campaigns", **fields)
    manifest = root / name
    manifest.write_text(text)
    flags = ("--no-plot",) if no_plot else ()
    result = run_cli("submit", str(manifest), "--executor", "local", *flags, env=ONE_THREAD)
    assert result.code == 0, result.err
    return Campaign(manifest, result, root / "campaigns" / str(yaml.safe_load(text)["campaign"]))


def make_task(
    experiment: str,
    numerics: Numerics | None = None,
    *,
    task_id: str = "t0",
    exp_id: str = "test",
    target: str = "cpu",
    inputs: tuple[str, ...] = (),
) -> Task:
    """A real `toolkit.plan.Task` (repeat 0, no params, no sweep point) for building a `RunContext`."""
    from toolkit.manifest import Numerics
    from toolkit.plan import Task

    return Task(task_id, exp_id, experiment, target, 0, {}, numerics or Numerics(), inputs, 0, {})


@pytest.fixture
def run_context() -> Iterator[Callable[..., RunContext]]:
    """Build a real `RunContext` for calling one experiment's `run` directly: a real `Task`, the tiny
    random Llama loaded through the toolkit's loader under `numerics` (None with `model=False`),
    `Inputs` over `store` limited to the experiment's declared reads, and `out` checked against its
    `STORES` on an in-memory HDF5 file (closed after the test)."""
    import h5py

    from toolkit import experiments
    from toolkit.context import Inputs, RunContext
    from toolkit.manifest import ModelSpec
    from toolkit.models.loading import load
    from toolkit.store.writer import CheckedGroup

    files: list[h5py.File] = []

    def build(
        experiment: str,
        numerics: Numerics,
        *,
        model: bool = True,
        store: Any = None,
        inputs: tuple[str, ...] = (),
        target: str = "cpu",
        prompts: tuple[str, ...] = ("x",),
    ) -> RunContext:
        module = experiments.get(experiment)
        loaded: tuple[Any, Any, Any] = (None, None, None)
        if model:
            loaded = load(ModelSpec("tiny-random-llama", device="cpu"), numerics)
        files.append(h5py.File(f"ctx{len(files)}.h5", "w", driver="core", backing_store=False))
        reads = tuple(module.READS) + tuple(getattr(module, "READS_OPTIONAL", ()))
        return RunContext(
            task=make_task(experiment, numerics, target=target, inputs=inputs),
            model=loaded[0],
            tokenizer=loaded[1],
            device=loaded[2],
            numerics=numerics,
            prompts=prompts,
            inputs=Inputs(store, inputs, experiment, reads),
            out=CheckedGroup.for_experiment(files[-1], experiment, module.STORES),
        )

    yield build
    for file in files:
        file.close()
