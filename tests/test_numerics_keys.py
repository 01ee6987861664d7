"""The numerics keys of #14: validated (located, did-you-mean, refused where not implemented), out
of the task id at their defaults, and each changing what it claims: the SDPA backend torch
selects, LayerCast's bf16-valued fp32 weights, the reduced-precision-reduction flags, and all of
them recorded in the store (run attrs numerics and provenance) by a real campaign."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import submit_campaign

from toolkit.errors import ManifestError, ModelError
from toolkit.manifest import ModelSpec, Numerics, load_manifest

MANIFEST = """\
campaign: keys
model:
  source: tiny-random-llama
  {model}
targets: [cpu]
prompts: ["The capital of France is", "Hi"]
experiments:
  - name: {name}
    id: one
{entry}"""


def _problems(tmp_path: Path, model: str = "", name: str = "exp4.generate", entry: str = "") -> list[str]:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(model=model, name=name, entry=entry))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    prefix = f"{path}:"
    assert all(p.startswith(prefix) for p in caught.value.problems), caught.value.problems
    return [p[len(prefix) :] for p in caught.value.problems]


def test_new_keys_are_checked_with_location_and_did_you_mean(tmp_path: Path) -> None:
    assert _problems(tmp_path, "padding_side: lefft") == [
        "4:17: model.padding_side: must be one of left, right, got 'lefft'; did you mean 'left'?"
    ]
    assert _problems(tmp_path, "batch_size: 0") == [
        "4:15: model.batch_size: must be an integer from 1 to 4096, got '0'"
    ]
    assert _problems(tmp_path, "logits_path: all_row") == [
        "4:16: model.logits_path: must be one of null, last_row, all_rows, got 'all_row'; did you mean 'all_rows'?"
    ]
    assert _problems(tmp_path, "batch_position: 2") == [
        f"8:5: experiments[0]: batch_position (model.batch_position, {tmp_path / 'm.yaml'}:4:19) is 2, but "
        "batch_size is 1: the row must lie below batch_size (rows count from 0)"
    ]
    assert _problems(tmp_path, "dtype: bfloat16", entry="    numerics: {weights_dtype: float32}\n") == [
        "10:31: experiments[0].numerics.weights_dtype: is float32, which dtype bfloat16 does not hold exactly: "
        "use one of bfloat16 (or null) for weights computed in bfloat16"
    ]


def test_an_experiment_that_does_not_implement_a_key_refuses_it(tmp_path: Path) -> None:
    """exp2.lipschitz runs the model but not in batches: a swept batch_size is refused at the value,
    and (as before) its JVPs refuse a non-eager attention, sdpa_math included."""
    problems = _problems(tmp_path, name="exp2.lipschitz", entry="    sweep: {batch_size: [1, 2]}\n")
    assert problems == [
        "10:29: experiments[0].sweep.batch_size[1]: is 2, but exp2.lipschitz does not implement numerics key "
        "batch_size (it honours none of batch_size, batch_fill, batch_position, padding_side, logits_path): "
        "leave it at its default 1"
    ]
    problems = _problems(tmp_path, name="exp2.lipschitz", entry="    numerics: {attn_implementation: sdpa_math}\n")
    assert len(problems) == 1 and "is 'sdpa_math', but exp2.lipschitz takes JVPs" in problems[0]


def test_defaults_keep_the_task_ids_and_new_values_change_them(tmp_path: Path) -> None:
    """A task's id hashes the five original numerics keys only while the new ones are at their
    defaults (recomputed here from the task's fields), so stores planned before them are found."""
    from toolkit.plan import build_plan, canonical_json, model_identity

    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(model="", name="exp4.generate", entry="    sweep: {batch_size: [1, 4]}\n"))
    manifest = load_manifest(path)
    tasks = sorted(build_plan(manifest).tasks.values(), key=lambda t: t.numerics.batch_size)
    old_keys = ("dtype", "attn_implementation", "kv_cache", "tf32", "deterministic")
    ids = []
    for task, extra in zip(tasks, ({}, {"batch_size": 4})):
        identity = {
            "experiment": task.experiment,
            "params": task.params,
            "target": task.target,
            "repeat": task.repeat,
            "numerics": {**{k: getattr(task.numerics, k) for k in old_keys}, **extra},
            "model": model_identity(manifest),
            "prompts_sha256": hashlib.sha256(
                json.dumps(list(manifest.prompts), separators=(",", ":")).encode()
            ).hexdigest(),
            "inputs": [],
        }
        assert canonical_json(list(manifest.prompts)) == json.dumps(list(manifest.prompts), separators=(",", ":"))
        ids.append(hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16])
    assert [t.task_id for t in tasks] == ids and ids[0] != ids[1]


def test_sdpa_variants_force_the_backend_torch_selects() -> None:
    """Inside the worker's context torch's own SDPA backend selection returns the forced kernel
    (MATH, FLASH) and refuses to fall back; an unavailable backend fails the task at start."""
    import torch
    from torch.nn.attention import SDPBackend

    from toolkit.models.numerics import attention_context, check_runnable

    q = torch.randn(1, 2, 5, 8)
    free = torch._fused_sdp_choice(q, q, q, None, 0.0, True)
    for name, backend in (("sdpa_math", SDPBackend.MATH), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        with attention_context(Numerics(attn_implementation=name)):
            assert torch._fused_sdp_choice(q, q, q, None, 0.0, True) == backend.value, name
            assert torch.backends.cuda.math_sdp_enabled() == (name == "sdpa_math")
    assert torch._fused_sdp_choice(q, q, q, None, 0.0, True) == free  # restored after
    with attention_context(Numerics(attn_implementation="sdpa_math")):
        math = torch.nn.functional.scaled_dot_product_attention(q, q * 3, q, is_causal=True)
    with attention_context(Numerics(attn_implementation="sdpa_flash")):
        flash = torch.nn.functional.scaled_dot_product_attention(q, q * 3, q, is_causal=True)
    torch.testing.assert_close(math, flash)  # the same attention ...
    assert not torch.equal(math, flash)  # ... by another kernel: other bits
    if not torch.cuda.is_available():
        with pytest.raises(
            ModelError,
            match=r"^attn_implementation sdpa_efficient \(SDPA backend EFFICIENT_ATTENTION\) "
            r"cannot run on cpu in float32: .*; choose another attn_implementation for this target$",
        ):
            check_runnable(Numerics(attn_implementation="sdpa_efficient"), torch.device("cpu"))
        with pytest.raises(
            ModelError, match="^attn_implementation flash_attention_2 needs a CUDA device; this task runs on cpu$"
        ):
            check_runnable(Numerics(attn_implementation="flash_attention_2"), torch.device("cpu"))


def test_layercast_weights_are_bf16_values_held_and_computed_in_fp32() -> None:
    """weights_dtype bfloat16 with dtype float32: every parameter is fp32 and equals its own bf16
    rounding, rounding changed most of them, and the forward runs (and returns logits) in fp32."""
    import torch

    from toolkit.worker import _ModelCache

    cache = _ModelCache(ModelSpec("tiny-random-llama", device="cpu"))
    plain = {n: p.clone() for n, p in cache.get(Numerics(), True)[0].named_parameters()}
    model = cache.get(Numerics(weights_dtype="bfloat16"), True)[0]
    params = dict(model.named_parameters())
    assert params.keys() == plain.keys()
    for name, w in params.items():
        assert w.dtype == torch.float32, name
        assert torch.equal(w, w.bfloat16().float()), name
        assert torch.equal(w, plain[name].bfloat16().float()), name  # round to nearest even of the fp32 weights
    changed = {n for n in params if not torch.equal(params[n], plain[n])}
    assert changed == {n for n in params if "norm" not in n}  # the norms' weights (ones) are bf16 values already
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.dtype == torch.float32


def test_reduced_precision_reduction_is_set_in_torch() -> None:
    import torch

    from toolkit.models.numerics import apply

    try:
        flags = apply(Numerics(reduced_precision_reduction=False))
        assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction is False
        assert torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction is False
        assert flags["allow_bf16_reduced_precision_reduction"] is False
        assert flags["allow_fp16_reduced_precision_reduction"] is False
    finally:
        flags = apply(Numerics())
    assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction is True
    assert flags["allow_fp16_reduced_precision_reduction"] is True


CAMPAIGN = """\
campaign: keys
output: {output}
model: {{source: tiny-random-llama, dtype: float32}}
targets: [cpu]
prompts: ["The capital of France is", "Hi"]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 3, top_k: 5, stop_at_eos: false}}
    numerics:
      attn_implementation: sdpa_math
      batch_size: 3
      batch_fill: random
      batch_position: 2
      padding_side: right
      logits_path: all_rows
      weights_dtype: bfloat16
      reduced_precision_reduction: false
"""


def test_every_key_is_recorded_in_the_store(tmp_path: Path) -> None:
    """A real campaign with every new key away from its default: the run's numerics hold them, its
    provenance the flags set (SDPA backend forced, weights format, reduction flags) and its attrs
    the logits path and batch used."""
    campaign = submit_campaign(tmp_path, CAMPAIGN, no_plot=True)
    with campaign.store() as store:
        (run,) = store.runs("exp4.generate")
        assert run.numerics == {
            **Numerics().to_dict(),
            "attn_implementation": "sdpa_math",
            "batch_size": 3,
            "batch_fill": "random",
            "batch_position": 2,
            "padding_side": "right",
            "logits_path": "all_rows",
            "weights_dtype": "bfloat16",
            "reduced_precision_reduction": False,
        }
        flags: dict[str, Any] = run.attrs["provenance"]["flags"]
        assert flags["sdpa_backend_forced"] == "MATH" and flags["attn_implementation_loaded"] == "sdpa"
        assert flags["weights_rounded_to"] == "bfloat16"
        assert flags["allow_bf16_reduced_precision_reduction"] is False
        assert run.attrs["logits_path"] == "all_rows"
        assert run.attrs["batch"].startswith("row 2 of 3, fill random, padding right")
        assert run["prompts/000/generated_ids"].shape == (3,)


def test_toolkit_experiments_lists_the_keys_each_experiment_honours() -> None:
    from toolkit import experiments
    from toolkit.report import experiment_text

    generate = experiment_text("exp4.generate", experiments.get("exp4.generate")).splitlines()
    assert (
        "numerics: dtype, attn_implementation, kv_cache, tf32, deterministic, batch_size, batch_fill, "
        "batch_position, padding_side, logits_path, weights_dtype, reduced_precision_reduction"
    ) in generate
    lipschitz = experiment_text("exp2.lipschitz", experiments.get("exp2.lipschitz")).splitlines()
    assert (
        "numerics: dtype, attn_implementation, kv_cache, tf32, deterministic, weights_dtype, "
        "reduced_precision_reduction (not implemented, refused unless default: batch_size, batch_fill, "
        "batch_position, padding_side, logits_path)"
    ) in lipschitz
