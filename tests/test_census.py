"""exp4.census on the tiny random Llama, checked against independent recounts of what it stored.

The task runs through its real `run` with a real `RunContext` (the toolkit's loader, the checked
writer), at tiny settings: 8 completions of 2 prompts, 3 tokens, batches of 1-3 rows.  Every
count it stores is recounted here with numpy from its stored completions (`np.unique` over the
padded rows, not the code under test), and the teacher-forced forward alone is recomputed with a
plain transformers forward of the packaged loader's model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

PROMPTS = ("The capital of France is", "Numbers: 1, 2, 3, 4,")


@pytest.fixture(scope="module")
def census(one_torch_thread: None) -> Any:
    """(stored arrays per prompt, the context) of one tiny census."""
    import h5py
    from conftest import make_task

    from toolkit import experiments
    from toolkit.context import Inputs, RunContext
    from toolkit.experiments.exp4 import census as module
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load
    from toolkit.store.writer import CheckedGroup

    numerics = Numerics()
    model, tokenizer, device = load(ModelSpec("tiny-random-llama", device="cpu"), numerics)[:3]
    handle = h5py.File("census.h5", "w", driver="core", backing_store=False)
    ctx = RunContext(
        task=make_task("exp4.census", numerics),
        model=model,
        tokenizer=tokenizer,
        device=device,
        numerics=numerics,
        prompts=PROMPTS,
        inputs=Inputs(None, (), "exp4.census", ()),
        out=CheckedGroup.for_experiment(handle, "exp4.census", experiments.get("exp4.census").STORES),
    )
    params = module.Params(completions=8, max_new_tokens=3, batch_sizes=(1, 2, 3), top_k=2, stop_at_eos=False)
    module.run(ctx, params)
    stored = [{k: v[()] for k, v in handle[f"prompts/{i:03d}"].items()} for i in range(len(PROMPTS))]
    yield stored, ctx, params, handle.attrs["summary"], handle
    handle.close()


def test_stored_unique_count_equals_a_recount(census):
    stored, _, params, _, _ = census
    for arrays in stored:
        ids = arrays["completion_ids"]
        assert ids.shape == (params.completions, params.max_new_tokens)
        assert (arrays["completion_length"] == params.max_new_tokens).all()  # no EOS stop here
        rows, inverse, counts = np.unique(ids, axis=0, return_inverse=True, return_counts=True)
        assert int(arrays["unique_completions"]) == len(rows)
        modal = int(arrays["modal_index"])
        inverse = inverse.reshape(-1)
        assert counts[inverse[modal]] == counts.max()
        assert modal == min(np.flatnonzero(counts[inverse] == counts.max()))  # ties: lowest index
        # classes: equal rows share a class (numbering is the module's; compare as partitions)
        klass = arrays["completion_class"]
        assert all((klass == klass[i]).tolist() == (inverse == inverse[i]).tolist() for i in range(len(klass)))
        differs = ids != ids[modal]
        want = np.where(differs.any(axis=1), differs.argmax(axis=1), -1)
        assert arrays["first_divergence"].tolist() == want.tolist()


def test_draws_are_seeded_and_within_the_params(census):
    from toolkit.experiments.exp4.census import draws

    stored, _, params, _, _ = census
    for index, arrays in enumerate(stored):
        again = draws(params, "left", index)
        assert arrays["batch_size"].tolist() == [d.size for d in again]
        assert arrays["batch_position"].tolist() == [d.position for d in again]
        assert [f.decode() for f in arrays["batch_fill"]] == [d.fill for d in again]
        assert set(arrays["batch_size"].tolist()) <= {1, 2, 3}
        assert (arrays["batch_position"] < arrays["batch_size"]).all()
    assert stored[0]["batch_size"].tolist() != stored[1]["batch_size"].tolist() or (
        stored[0]["batch_fill"].tolist() != stored[1]["batch_fill"].tolist()
    )  # each prompt draws its own batches


def test_teacher_forced_flips_recount_and_alone_equals_a_plain_forward(census):
    import torch

    stored, ctx, _, summary, _ = census
    for index, arrays in enumerate(stored):
        modal = arrays["completion_ids"][int(arrays["modal_index"])]
        prompt = torch.as_tensor(arrays["prompt_ids"])
        with torch.inference_mode():
            logits = ctx.model(input_ids=torch.cat([prompt, torch.as_tensor(modal[:-1])])[None]).logits[0]
        rows = logits[len(prompt) - 1 :].double()
        assert arrays["tf_alone_argmax"].tolist() == rows.argmax(dim=1).tolist()
        top2 = rows.topk(2, dim=1).values
        # lm_head over the kept rows only vs all rows may move the last bits (~1e-5 in fp32 logits)
        np.testing.assert_allclose(arrays["tf_alone_margin"], (top2[:, 0] - top2[:, 1]).numpy(), atol=1e-4)
        tf = arrays["tf_argmax"]
        assert arrays["tf_flips_alone"].tolist() == (tf != arrays["tf_alone_argmax"][None]).sum(axis=1).tolist()
        assert arrays["tf_flips_modal"].tolist() == (tf != modal[None]).sum(axis=1).tolist()
        assert f"prompt {index}: {int(arrays['unique_completions'])} unique of 8;" in summary


def test_params_check_names_the_bad_values():
    from toolkit.experiments.exp4.census import Params

    assert Params().check() == []
    assert Params(completions=0, batch_sizes=(), fills=("same", "mixed")).check() == [
        ("completions", "must be between 1 and 100000, got 0"),
        ("batch_sizes", "must be a non-empty list of sizes in 1..4096, got []"),
        ("fills", "must be a non-empty list of same, others, random, got ['same', 'mixed']"),
    ]


def test_figures_one_set_per_prompt(census, tmp_path):
    from toolkit.experiments.exp4.census import plot
    from toolkit.store.reader import RunView

    *_, handle = census
    run = RunView(handle["/"])
    paths = plot(run, tmp_path)
    names = ("census_unique", "census_divergence", "census_margins")
    assert [p.name for p in paths] == [f"{n}_{run.task_id}_p{k:03d}.png" for k in range(2) for n in names]
    assert all(p.stat().st_size > 1000 for p in paths)
