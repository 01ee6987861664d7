"""exp4.generate resumes a killed task from its per-prompt checkpoint (`shards/<task_id>.ckpt/`).

The worker kills itself (TOOLKIT_FAULT=generate-prompt:2, a SIGKILL like a node failure) right
after the second prompt's checkpoint is saved; the resubmitted task must load those two prompts
(`prompts_resumed` == 2), generate the rest, and store exactly the bytes of an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from slurm_helpers import slurm_cluster  # noqa: F401  (a fixture)

from toolkit.store.reader import Store

PROMPTS = '["The capital of France is", "Numbers: 1, 2, 3,", "Once upon a time", "def main():"]'
MANIFEST = """\
campaign: {campaign}
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: {prompts}
targets: [a100]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 6, top_k: 5, stop_at_eos: false}}
"""


def _manifest(tmp_path: Path, campaign: str, extra: str = "") -> Path:
    path = tmp_path / f"{campaign}.yaml"
    path.write_text(extra + MANIFEST.format(campaign=campaign, output=tmp_path / "campaigns", prompts=PROMPTS))
    return path


def _run(store_path: Path) -> tuple[str, dict[str, tuple[str, tuple[int, ...], bytes]], int]:
    """(task id, every dataset as (dtype, shape, raw bytes), prompts_resumed) of the one generate run."""
    with Store(store_path) as store:
        [run] = store.runs("exp4.generate")
        data = {}
        for name in run.datasets():
            array = np.asarray(run[name])
            data[name] = (str(array.dtype), array.shape, array.tobytes())
        return run.task_id, data, int(run.attrs["prompts_resumed"])


def _killed_then_resumed(tmp_path: Path, campaign: str, executor: str, extra: str = "") -> Path:
    manifest = _manifest(tmp_path, campaign, extra)
    folder = tmp_path / "campaigns" / campaign
    crashed = run_cli(
        "submit",
        str(manifest),
        "--executor",
        executor,
        "--no-plot",
        env={"TOOLKIT_FAULT": "generate-prompt:2"},
        timeout=300,
    )
    assert crashed.code == 1, crashed.err
    [ckpt] = (folder / "shards").glob("*.ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == ["prompt000.h5", "prompt001.h5"]
    assert not list((folder / "shards").glob("*.h5"))  # no shard was published
    resumed = run_cli("submit", str(manifest), "--executor", executor, "--no-plot", timeout=300)
    assert resumed.code == 0, resumed.err
    assert "0 already complete, 1 to run" in resumed.out
    assert not ckpt.exists()  # removed once the shard is published
    return folder


def _clean_run(tmp_path: Path) -> Path:
    clean = run_cli("submit", str(_manifest(tmp_path, "uninterrupted")), "--executor", "local", "--no-plot")
    assert clean.code == 0, clean.err
    return tmp_path / "campaigns" / "uninterrupted"


def test_killed_generate_resumes_from_checkpoint_bitwise(tmp_path: Path) -> None:
    folder = _killed_then_resumed(tmp_path, "killed", "local")
    task_id, data, resumed = _run(folder / "store.h5")
    assert resumed == 2
    clean_id, clean_data, clean_resumed = _run(_clean_run(tmp_path) / "store.h5")
    assert clean_resumed == 0
    assert task_id == clean_id
    assert sorted(data) == sorted(clean_data) and len(data) == 4 * 7  # 4 prompts x 7 datasets
    for name in clean_data:
        assert data[name] == clean_data[name], name


@pytest.mark.slurm
def test_killed_generate_resumes_on_slurm_bitwise(tmp_path: Path, slurm_cluster: str) -> None:
    folder = _killed_then_resumed(
        tmp_path, "killed-slurm", "slurm", extra="site: testcluster\nresources: {time_min: 10, cpus: 2, mem_gb: 2}\n"
    )
    task_id, data, resumed = _run(folder / "store.h5")
    assert resumed == 2
    clean_id, clean_data, _ = _run(_clean_run(tmp_path) / "store.h5")
    assert task_id == clean_id
    assert data == clean_data
