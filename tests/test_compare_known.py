"""exp4.compare on hand-made exp4.generate runs whose answer is known by construction.

Three runs, two prompts, written as real shards and gathered into a real store.h5; exp4.compare's
`run` reads them through the store like a task does.  Runs A and B are bit-identical (the
same-hardware control); run C follows A's tokens on prompt 0 up to step 3, where its argmax
differs, and never leaves A's tokens on prompt 1 but its logits do.  C's logits are A's moved by
a chosen number of float32 ULPs (`np.nextafter`), so the largest distance is known before any
code runs; the test still recomputes every expected value with numpy from the stored arrays
(bits as integers), never with the code under test.  Traps: top-k lists that hold the same ids in
another order (token-aligned, not position-aligned), an id in only one run's top-k, a pair of
logits on either side of zero, and a huge difference after the divergence step (not counted).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_task, submit_campaign

K = 4  # top-k kept per step


def moved(value: float, ulps: int) -> np.float32:
    """`value` as float32 moved `ulps` representable values up (down if negative)."""
    x = np.float32(value)
    for _ in range(abs(ulps)):
        x = np.nextafter(x, np.float32(np.inf if ulps > 0 else -np.inf), dtype=np.float32)
    return x


def trace(steps: list[dict[int, np.float32]], prompt_ids: list[int]) -> dict[str, np.ndarray]:
    """A generate trace from per-step {token id: logit} (the K largest), as exp4.generate stores it."""
    ids, logits = [], []
    for row in steps:
        order = sorted(row, key=lambda t: (-float(row[t]), t))[:K]  # largest first, lowest id wins a tie
        ids.append(order)
        logits.append([row[t] for t in order])
    topk_ids, topk_logits = np.array(ids, np.int64), np.array(logits, np.float32)
    hashes = [hash(tuple(sorted((t, v.tobytes()) for t, v in row.items()))) & (2**63 - 1) for row in steps]
    return {
        "prompt_ids": np.array(prompt_ids, np.int64),
        "generated_ids": topk_ids[:, 0].copy(),
        "topk_ids": topk_ids,
        "topk_logits": topk_logits,
        "margin": topk_logits[:, 0].astype(np.float64) - topk_logits[:, 1].astype(np.float64),
        "logits_hash": np.array(hashes, np.uint64),
    }


def base_rows() -> list[list[dict[int, np.float32]]]:
    """Run A's logits: prompt 0 (5 steps) and prompt 1 (4 steps)."""
    f = np.float32
    prompt0 = [
        {10: f(3.5), 11: f(2.0), 12: f(1.0), 13: f(0.5), 14: f(0.25)},
        {20: f(4.0), 21: f(3.0), 22: moved(3.0, -1), 23: f(1.5)},
        {30: f(2.0), 31: f(1.0), 32: f(-1e-45), 33: f(-0.5)},
        {40: f(1.0), 41: moved(1.0, -10), 42: f(0.5), 43: f(0.1)},
        {50: f(9.0), 51: f(1.0), 52: f(0.5), 53: f(0.1)},
    ]
    prompt1 = [
        {60: f(5.0), 61: f(4.0), 62: f(3.0), 63: f(2.0)},
        {70: f(5.0), 71: f(4.0), 72: f(3.0), 73: f(2.0)},
        {80: f(5.0), 81: f(4.0), 82: f(3.0), 83: f(2.0)},
        {90: f(5.0), 91: f(4.0), 92: f(3.0), 93: f(2.0)},
    ]
    return [prompt0, prompt1]


def c_rows() -> list[list[dict[int, np.float32]]]:
    """Run C: A's logits moved by known ULPs.  Largest distance over the identical contexts: 40."""
    p0, p1 = base_rows()
    p0[1] = {20: p0[1][20], 21: moved(3.0, -2), 22: moved(3.0, -1), 23: moved(1.5, 5)}  # 22 now above 21
    p0[2] = {30: moved(2.0, 3), 31: p0[2][31], 32: np.float32(1e-45), 33: p0[2][33]}  # -1e-45 -> +1e-45: 2 ULPs
    p0[3] = {40: moved(1.0, -40), 41: p0[3][41], 42: p0[3][42], 44: np.float32(0.7)}  # d = 3: 41 wins; 44 new
    p0[4] = {50: np.float32(1.0), 51: np.float32(9.0), 52: p0[4][52], 53: p0[4][53]}  # after d: not counted
    p1[2] = {80: moved(5.0, 7), 81: p1[2][81], 82: p1[2][82], 83: p1[2][83]}  # same tokens, logits differ
    return [p0, p1]


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 bits as integers that count representable values (negative values mirrored)."""
    bits = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def expected_pair(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, object]:
    """Every compare measure of one prompt, from the stored arrays with numpy only."""
    common = min(len(a["generated_ids"]), len(b["generated_ids"]))
    differs = np.flatnonzero(a["generated_ids"][:common] != b["generated_ids"][:common])
    d = int(differs[0]) if differs.size else -1
    bit = np.flatnonzero(a["logits_hash"][:common] != b["logits_hash"][:common])
    worst = 0
    for step in range(d + 1 if d >= 0 else common):
        for t, value in zip(a["topk_ids"][step], a["topk_logits"][step]):
            hit = np.flatnonzero(b["topk_ids"][step] == t)
            if hit.size:
                worst = max(worst, abs(int(_ordered(np.array([value]))[0] - _ordered(b["topk_logits"][step][hit])[0])))
    out: dict[str, object] = {
        "first_divergence": d,
        "common_length": common,
        "first_bitwise_diff": int(bit[0]) if bit.size else -1,
        "max_ulp_identical_context": worst,
    }
    if d >= 0:
        out["margin_at_divergence"] = (float(a["margin"][d]), float(b["margin"][d]))
        out["tokens_at_divergence"] = (int(a["generated_ids"][d]), int(b["generated_ids"][d]))
    return out


@pytest.fixture
def compared(tmp_path: Path) -> Iterator[tuple[dict[str, list[dict[str, object]]], h5py.File, dict[str, list]]]:
    """Shards of runs A, B, C gathered into store.h5, then exp4.compare run on them."""
    from toolkit.context import Inputs, RunContext
    from toolkit.experiments.exp4 import compare
    from toolkit.manifest import Numerics
    from toolkit.store.gather import gather
    from toolkit.store.reader import Store
    from toolkit.store.shard import open_shard

    prompts = [[1, 2, 3], [1, 4]]
    runs = {
        "aaaa000000000001": ("a100", 0, base_rows()),
        "aaaa000000000002": ("a100", 1, base_rows()),
        "cccc000000000003": ("h100", 0, c_rows()),
    }
    traces = {}
    for task_id, (target, repeat, rows) in runs.items():
        traces[task_id] = [trace(steps, ids) for steps, ids in zip(rows, prompts)]
        attrs = {
            "experiment": "exp4.generate",
            "exp_id": "generate",
            "target": target,
            "repeat": repeat,
            "params": {},
            "numerics": Numerics().to_dict(),
            "model": {},
            "inputs": [],
            "provenance": {},
        }
        with open_shard(tmp_path, task_id, attrs) as out:
            for k, prompt in enumerate(traces[task_id]):
                for name, value in prompt.items():
                    out.create_dataset(f"prompts/{k:03d}/{name}", data=value)
    gather(tmp_path, manifest_text="")
    task = make_task("exp4.compare", task_id="compare", exp_id="compare", target="", inputs=tuple(runs))
    with Store(tmp_path / "store.h5") as store, h5py.File(tmp_path / "compare.h5", "w") as out:
        ctx = RunContext(
            task=task,
            model=None,
            tokenizer=None,
            device=None,
            numerics=Numerics(),
            prompts=(),
            inputs=Inputs(store, tuple(runs)),
            out=out,
            progress_stream=io.StringIO(),
        )
        compare.run(ctx, compare.Params())
    table = h5py.File(tmp_path / "compare.h5", "r")
    order = [x.decode() for x in table["run_task_ids"][()]]
    expected = {}
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            expected[f"{i},{j}"] = [expected_pair(x, y) for x, y in zip(traces[a], traces[b])]
    yield expected, table, {"order": order}
    table.close()


def test_the_construction_has_the_intended_answer() -> None:
    """The hand-made case is what the docstring says, checked on the arrays themselves."""
    a = [trace(s, [1]) for s in base_rows()]
    c = [trace(s, [1]) for s in c_rows()]
    first = expected_pair(a[0], c[0])
    assert first["first_divergence"] == 3 and first["first_bitwise_diff"] == 1
    assert first["max_ulp_identical_context"] == 40 and first["tokens_at_divergence"] == (40, 41)
    assert expected_pair(a[1], c[1]) == {
        "first_divergence": -1,
        "common_length": 4,
        "first_bitwise_diff": 2,
        "max_ulp_identical_context": 7,
    }
    assert list(a[0]["topk_ids"][1]) == [20, 21, 22, 23] and list(c[0]["topk_ids"][1]) == [20, 22, 21, 23]


def test_compare_tables_equal_the_known_answer(compared) -> None:
    expected, table, info = compared
    n, p = 3, 2
    for name in ("first_divergence", "common_length", "first_bitwise_diff", "max_ulp_identical_context"):
        got = table[name][()]
        assert got.shape == (n, n, p)
        want = np.array([[[expected[f"{i},{j}"][k][name] for k in range(p)] for j in range(n)] for i in range(n)])
        assert np.array_equal(got, want), name
    c = info["order"].index("cccc000000000003")
    a = info["order"].index("aaaa000000000001")
    assert table["max_ulp_identical_context"][a, c, 0] == 40 and table["max_ulp_identical_context"][a, c, 1] == 7
    for i in range(n):
        for j in range(n):
            for k in range(p):
                want = expected[f"{i},{j}"][k]
                margins, tokens = table["margin_at_divergence"][i, j, k], table["tokens_at_divergence"][i, j, k]
                if want["first_divergence"] >= 0:
                    assert tuple(margins) == want["margin_at_divergence"]
                    assert tuple(tokens) == want["tokens_at_divergence"]
                else:
                    assert np.isnan(margins).all() and tuple(tokens) == (-1, -1)


def test_identical_classes_and_summary(compared) -> None:
    from toolkit.experiments.exp4.compare import identical_classes

    _, table, info = compared
    tables = {k: table[k][()] for k in ("first_divergence", "first_bitwise_diff", "common_length")}
    order = info["order"]
    classes = [sorted(order[i] for i in members) for members in identical_classes(tables)]
    assert sorted(classes) == [["aaaa000000000001", "aaaa000000000002"], ["cccc000000000003"]]
    labels = [x.decode() for x in table["run_labels"][()]]
    summary = table.attrs["summary"]
    first = [labels[i] for i in range(3) if order[i].startswith("aaaa")]
    assert summary.splitlines()[0] == "3 runs form 2 class(es) of bit-identical runs (all 2 prompts):"
    assert f"  [A] {', '.join(first)}" in summary.splitlines()
    assert summary.splitlines()[-1] == (
        "  A vs B: 1/2 prompts diverged (median step 3, earliest 3); logits first differ at step 1"
    )


BATCH_LABELS = """\
campaign: labels
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
targets: [cpu]
experiments:
  - name: exp4.generate
    id: alone
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
  - name: exp4.generate
    id: batched
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
    numerics: {{batch_size: 2}}
  - name: exp4.compare
    id: compare
    needs: [alone, batched]
"""


def test_runs_that_differ_only_in_batch_size_get_different_labels(tmp_path):
    """Two classes that differ only in a #14 key are told apart in compare's labels and listing."""
    campaign = submit_campaign(tmp_path, BATCH_LABELS, no_plot=True)
    with campaign.store() as store:
        compare = next(r for r in store.runs() if r.experiment == "exp4.compare")
        labels = sorted(x.decode() for x in compare["run_labels"])
    assert labels == ["cpu r0 float32/eager/kv", "cpu r0 float32/eager/kv/batch_size=2"]
