"""Shared fixtures: run the real CLI in a subprocess, write manifests, and locate the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

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
