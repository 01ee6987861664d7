"""A model too large for its device is refused in one line before loading (toolkit/models/fit.py).

The real limit: the process's address space (RLIMIT_AS, `ulimit -v`) set to 1 GiB for the CLI and
the worker, and the packaged SmolLM2's weights asked for in float64, which need 1.08 GB: more than
the limit allows, whatever the process already uses.  The size in the message is computed here from
the safetensors file's own tensor shapes.  Refused by `submit`'s preflight on the local executor
(exit 2, one line, no campaign folder), and by the worker itself (the path a Slurm task takes):
the task fails with the same sentence in its `.failed.json`, nothing published.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LIMIT = 1 << 30  # 1 GiB of address space: torch imports in about 0.7 GB, the weights need 1.08 GB
MANIFEST = """\
campaign: fit
output: {output}
model: {{source: {source}, dtype: float64}}
prompts: ["The capital of France is"]
experiments:
  - name: exp4.generate
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
"""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run python ARGS under the 1 GiB address-space limit, one torch thread."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_limited,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's model folder holding the packaged SmolLM2 (its files linked, not copied)."""
    from toolkit.models.loading import prepare_packaged

    packaged = prepare_packaged()
    folder = tmp_path_factory.mktemp("fit") / "smollm2"
    folder.mkdir()
    for path in packaged.iterdir():
        (folder / path.name).symlink_to(path)
    return folder


def _need_gb(folder: Path) -> str:
    """The weights' size in float64, from the tensors' shapes in the file (safetensors' own reader)."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as handle:
        numel = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return f"{numel * 8 / 1e9:.2f}"


def _sentence(need: str) -> re.Pattern[str]:
    return re.compile(
        rf"the model's weights need {re.escape(need)} GB in float64 but cpu has (\d+\.\d\d) GB left under the "
        r"address-space limit \(RLIMIT_AS, ulimit -v\); use a smaller dtype, more memory \(resources\.mem_gb\) "
        r"or a smaller model"
    )


def test_submit_refuses_a_model_larger_than_the_memory_limit(tmp_path: Path, model: Path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "campaigns", source=model))
    result = _python("-m", "toolkit.cli", "submit", str(manifest), "--executor", "local", "--no-plot")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    column = manifest.read_text().splitlines()[2].index(str(model)) + 1
    prefix = f"error: {manifest}:3:{column}: model.source: "
    assert line.startswith(prefix), line
    found = _sentence(_need_gb(model)).fullmatch(line[len(prefix) :])
    assert found and float(found[1]) < 1.08, line
    assert not (tmp_path / "campaigns").exists()


def test_the_worker_refuses_it_before_loading(tmp_path: Path, model: Path):
    from toolkit import campaign
    from toolkit.manifest import load_manifest
    from toolkit.plan import build_plan
    from toolkit.store.campaign_dir import CampaignDir

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "campaigns", source=model))
    plan = build_plan(load_manifest(manifest))
    folder = campaign.campaign_dir_for(plan, None)
    campaign.prepare(plan, folder)
    [task_id] = plan.tasks
    code = f"from toolkit.worker import run_tasks; run_tasks({str(folder)!r}, [{task_id!r}])"
    result = _python("-c", code)
    assert result.returncode == 1
    assert f"1 task(s) failed: {task_id}" in result.stderr
    layout = CampaignDir(folder)
    assert layout.completed_shards() == {} and not layout.shard_path(task_id).exists()
    error = json.loads(layout.failure_path(task_id).read_text())["error"]
    assert error.startswith("ModelError: ")
    assert _sentence(_need_gb(model)).fullmatch(error.removeprefix("ModelError: ")), error


SHARDED = """\
campaign: sharded
model: {{source: tiny-random-llama, device_map: auto}}
prompts: ["The capital of France is"]
resources: {{gpus: 2}}
experiments:
  - name: exp4.generate
  - name: {second}
"""


def test_device_map_auto_refuses_experiments_taking_jvps(tmp_path: Path):
    """A split model cannot take JVPs: exp2.lipschitz is refused, in one located line."""
    from toolkit.errors import ManifestError
    from toolkit.manifest import load_manifest

    path = tmp_path / "manifest.yaml"
    path.write_text(SHARDED.format(second="exp4.generate\n    id: again"))
    assert load_manifest(path).model.device_map == "auto"
    path.write_text(SHARDED.format(second="exp2.lipschitz"))
    with pytest.raises(ManifestError) as refused:
        load_manifest(path)
    column = path.read_text().splitlines()[1].index("auto") + 1
    assert refused.value.problems == [
        f"{path}:2:{column}: model.device_map: is auto, but exp2.lipschitz (entry 'exp2.lipschitz') takes JVPs "
        "through the model (torch.func.jvp), which cannot run on a model split over devices; remove "
        "device_map or run that entry from a manifest without it"
    ]


def test_device_map_auto_on_a_cpu_only_host_loads_the_same_model():
    """Without GPUs, accelerate's auto map puts every layer on the CPU: the logits are bitwise those
    of a plain load.  (Spreading over several GPUs needs GPUs: untested here.)"""
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    plain, tokenizer, _ = load(ModelSpec("tiny-random-llama", device="cpu"), Numerics())
    mapped, _, device = load(ModelSpec("tiny-random-llama", device="cpu", device_map="auto"), Numerics())
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, mapped(ids).logits)
    assert device == torch.device("cpu") and {p.device for p in mapped.parameters()} == {torch.device("cpu")}
