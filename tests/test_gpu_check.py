"""benchmarks/gpu_check.py on a machine without CUDA (issue 13 §4): it runs its CPU-safe parts on the
tiny random Llama, refuses each CUDA part with its exact line, and writes the JSON with the CPU rows.

Known answers computed here: σ₁ of the Jacobian of the last position's final-norm state with
respect to that position's input embedding, by a dense Jacobian from torch.autograd and
torch.linalg.svdvals (not the toolkit's operator); the greedy ids of transformers' own generate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ONE_THREAD, REPO

PARTS = [
    "manifest",
    "tf32",
    "eager_vs_sdpa",
    "kv_vs_recompute",
    "batch_size",
    "sigma1_vs_svd",
    "exp7_faithful",
    "generate_speed",
]
REFUSED = [
    "manifest: refused: needs a CUDA device (torch.cuda.is_available() is False here)",
    "tf32: refused: needs a CUDA device (torch.cuda.is_available() is False here)",
]


def test_gpu_check_runs_its_cpu_parts_and_refuses_the_cuda_ones(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test is the no-CUDA path; on a CUDA machine run make gpu-check")
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ONE_THREAD},
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"gpu check on cpu (tiny-random-llama, 4 tokens), torch {torch.__version__}"
    assert lines[-3:] == [*REFUSED, f"wrote {out}"]
    data = json.loads(out.read_text())
    rows = {r["part"]: r for r in data["rows"]}
    assert [r["part"] for r in data["rows"]] == PARTS
    assert [rows[p]["reason"] for p in ("manifest", "tf32")] == REFUSED
    for part in PARTS[2:]:
        row = rows[part]
        assert (row["status"], row["device"], row["model"]) == ("ok", "cpu", "tiny-random-llama"), row
        assert any(line.startswith(f"{part:<16} ok ") for line in lines), part
    assert data["identity"]["device"] == "cpu" and data["identity"]["torch"] == torch.__version__
    # exp7's faithful mode and a per-point loop agree bitwise on any machine (a plain batch of 8 need not:
    # on AVX-512 the tiny model's 8-row matmuls round unlike its 4-row ones)
    assert rows["exp7_faithful"]["bitwise_equal"] is True and rows["exp7_faithful"]["batch"] >= 1
    reference, ids = _known_answers()
    assert abs(rows["sigma1_vs_svd"]["svd_sigma1"] - reference) <= 1e-5 * reference  # fp32 Jacobians, 2 AD paths
    assert abs(rows["sigma1_vs_svd"]["sigma1"] - reference) <= 1e-4 * reference
    assert rows["generate_speed"]["ids_equal"] is True and rows["generate_speed"]["ids"] == ids and len(ids) == 4
    assert rows["kv_vs_recompute"]["first_difference"] == -1  # 4 tokens of a random model: no flip


def _known_answers() -> tuple[float, list[int]]:
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, tokenizer, _ = load(ModelSpec("tiny-random-llama", device="cpu"), Numerics(attn_implementation="eager"))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    embeds = model.get_input_embeddings()(ids).detach()

    def f(last: torch.Tensor) -> torch.Tensor:
        x = torch.cat([embeds[:, :-1], last[None, None]], dim=1)
        return model.model(inputs_embeds=x, use_cache=False).last_hidden_state[0, -1]

    jacobian = torch.autograd.functional.jacobian(f, embeds[0, -1].clone())
    sigma = float(torch.linalg.svdvals(jacobian.double())[0])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    return sigma, out[0, ids.shape[1] :].tolist()
