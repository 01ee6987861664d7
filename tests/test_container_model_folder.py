"""A user's model folder (`model.source: /path`) is bound read-only into the task's container
(issue 13 §5): the production image holds only the packaged model, so a task can load a local
folder only through that bind.

The folder is the prepared SmolLM2-135M copied (hard links) to a path the image does not have; the
podman task must load it and generate the tokens plain transformers generates from the same folder
on the host.  Needs root, podman and the image (tests/container_helpers.py); skipped off CI without.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ONE_THREAD, run_cli
from container_helpers import image  # noqa: F401  (fixture)

from toolkit.store.reader import Store

pytestmark = pytest.mark.container

MANIFEST = """\
campaign: own-model
output: {output}
model: {{source: {model}, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 3, top_k: 2, stop_at_eos: false}}
container: {{runtime: podman, image: {image}}}
"""


def test_model_folder_is_bound_read_only_into_podman_tasks(tmp_path, image):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.launch.preflight import preflight
    from toolkit.manifest import load_manifest
    from toolkit.models.loading import prepare_packaged
    from toolkit.plan import build_plan

    folder = tmp_path / "my models" / "smol"  # a space: the bind must quote it
    shutil.copytree(prepare_packaged(), folder, copy_function=_link_or_copy)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "c", model=f'"{folder}"', image=image["ref"]))
    checked = preflight(build_plan(load_manifest(manifest)), "local", tmp_path / "c" / "own-model")
    assert checked.image is not None and str(folder) in checked.image.input_files
    assert f"-v '{folder}:{folder}:ro'" in checked.image.python(gpu_target=False)
    result = run_cli("submit", str(manifest), "--executor", "local", "--no-plot", env=ONE_THREAD, timeout=600)
    assert result.code == 0, result.out + result.err
    with Store(tmp_path / "c" / "own-model" / "store.h5") as store:
        (run,) = store.runs()
        assert run.attrs["provenance"]["container"]["inside"] is True
        assert run.attrs["model"]["source"] == str(folder)
        stored = run["prompts/000/generated_ids"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert stored == out[0, ids.shape[1] :].tolist()


def _link_or_copy(src: str, dst: str) -> str:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)
    return dst
