"""End to end through the real CLI and submitit's local executor, with real models and HDF5.

The tiny random Llama keeps the plumbing tests fast; the packaged SmolLM2-135M shows the science:
replicates agree bit for bit on one device, bf16 and fp32 really diverge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

from toolkit.store.reader import Store


def _datasets(run) -> dict[str, np.ndarray]:
    return {name: run[name] for name in run.datasets()}


def test_tiny_campaign_runs_stores_and_resumes(tiny_manifest, tmp_path):
    manifest = tiny_manifest()
    first = run_cli("submit", str(manifest), "--executor", "local")
    assert first.code == 0, first.err
    folder = tmp_path / "campaigns" / "tiny"
    assert "5 task(s), 0 already complete, 5 to run" in first.out
    assert f"store: {folder / 'store.h5'}" in first.out
    with Store(folder / "store.h5") as store:
        generate = store.runs("exp4.generate")
        compare = store.runs("exp4.compare")
        assert len(generate) == 4 and len(compare) == 1
        reference = _datasets(generate[0])
        assert len(reference) == 2 * 7  # 7 datasets per prompt, 2 prompts
        for run in generate[1:]:  # replicates and both targets: bitwise equal on one device
            other = _datasets(run)
            assert all(np.array_equal(reference[k], other[k]) for k in reference)
            assert other["prompts/000/topk_logits"].tobytes() == reference["prompts/000/topk_logits"].tobytes()
        run = generate[0]
        assert run.attrs["status"] == "complete" and run.numerics["dtype"] == "float32"
        prov = run.attrs["provenance"]
        assert prov["device"] == "cpu" and prov["versions"]["torch"] and prov["host"]
        assert prov["flags"]["deterministic_algorithms"] is True
        ids = run["prompts/000/generated_ids"]
        assert np.array_equal(ids, run["prompts/000/topk_ids"][:, 0])  # greedy = top-1 of stored top-k
        table = compare[0]
        assert table["first_divergence"].shape == (4, 4, 2)
        assert (table["first_divergence"] == -1).all() and (table["first_bitwise_diff"] == -1).all()
        assert sorted(table.attrs["inputs"]) == sorted(r.task_id for r in generate)
        uids = {r.task_id: r.attrs["run_uid"] for r in store.runs()}
    assert sorted(p.name for p in (folder / "figures").iterdir())[:2] == [
        f"compare_matrix_{compare[0].task_id}.png",
        f"compare_survival_{compare[0].task_id}.png",
    ]

    again = run_cli("submit", str(manifest), "--executor", "local")
    assert again.code == 0, again.err
    assert "5 already complete, 0 to run" in again.out
    with Store(folder / "store.h5") as store:
        assert {r.task_id: r.attrs["run_uid"] for r in store.runs()} == uids

    status = run_cli("status", str(folder))
    assert status.code == 0 and status.out.startswith("5 task(s): 5 stored")
    shown = run_cli("show", str(folder), "--json")
    assert shown.code == 0, shown.err
    check_show_json(shown.out, folder / "store.h5")


# `toolkit show --json`, as README.md ("The store") documents it: key → JSON type
SHOW_ATTRS = {
    "campaign": str,
    "schema_version": int,
    "toolkit_version": str,
    "manifest_sha256": str,
    "created_utc": str,
    "updated_utc": str,
    "shards_seen_ctime_ns": int,
}
SHOW_TASK = {
    "task_id": str,
    "experiment": str,
    "exp_id": str,
    "target": str,
    "repeat": int,
    "status": str,
    "started_utc": str,
    "finished_utc": str,
    "run_uid": str,
    "params": dict,
    "numerics": dict,
    "numerics_label": str,
    "model": dict,
    "inputs": list,
    "provenance": dict,
    "datasets": dict,
}
JSON_SCALARS = (str, int, float, bool, type(None))


def check_show_json(text: str, store_path: Path) -> None:
    """Keys and types of every part of the output against the documented schema."""

    def refuse(constant: str) -> None:
        pytest.fail(f"show --json printed {constant}, which is not JSON")

    shown = json.loads(text, parse_constant=refuse)
    assert sorted(shown) == ["attrs", "store", "tasks"] and shown["store"] == str(store_path)
    assert {k: type(v) for k, v in shown["attrs"].items()} == SHOW_ATTRS
    with Store(store_path) as store:
        runs = store.runs()
        assert [t["task_id"] for t in shown["tasks"]] == [r.task_id for r in runs]
        for task, run in zip(shown["tasks"], runs):
            assert {k: type(task.get(k)) for k in SHOW_TASK} == SHOW_TASK, task["task_id"]
            own = set(task) - set(SHOW_TASK)  # the experiment's own attributes
            assert own == set(run.attrs) - set(SHOW_TASK) - {"checksums"}
            for key in own:
                value = task[key]
                assert isinstance(value, JSON_SCALARS) or (
                    isinstance(value, list) and all(isinstance(x, JSON_SCALARS) for x in value)
                ), (key, value)
            assert all(isinstance(x, str) for x in task["inputs"]) and task["inputs"] == list(run.attrs["inputs"])
            assert task["repeat"] == run.repeat and task["params"] == run.params
            assert task["datasets"] == {
                n: {"shape": list(shape), "dtype": dtype} for n, (shape, dtype) in run.datasets().items()
            }
            assert all(type(n) is int for d in task["datasets"].values() for n in d["shape"])


def test_force_reruns_and_gives_identical_results(tiny_manifest, tmp_path):
    manifest = tiny_manifest(campaign="forced", tokens=3)
    assert run_cli("submit", str(manifest), "--executor", "local", "--no-plot").code == 0
    store_path = tmp_path / "campaigns" / "forced" / "store.h5"
    with Store(store_path) as store:
        before = {r.task_id: (r.attrs["run_uid"], _datasets(r)) for r in store.runs("exp4.generate")}
    forced = run_cli("submit", str(manifest), "--executor", "local", "--force", "--no-plot")
    assert forced.code == 0, forced.err
    assert "0 already complete, 5 to run" in forced.out
    with Store(store_path) as store:
        for run in store.runs("exp4.generate"):
            uid, data = before[run.task_id]
            assert run.attrs["run_uid"] != uid
            assert all(np.array_equal(data[k], run[k]) for k in data)


def _submit_with_pid(manifest: Path, executor: str) -> tuple[int, int, str]:
    """(pid of the `toolkit submit` process, its exit code, its stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", executor, "--no-plot"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=600)
    return proc.pid, proc.returncode, err


def _task_pids(store_path: Path) -> dict[str, int]:
    with Store(store_path) as store:
        return {r.task_id: r.attrs["provenance"]["pid"] for r in store.runs()}


def test_debug_executor_runs_in_process(tiny_manifest, tmp_path):
    pid, code, err = _submit_with_pid(tiny_manifest(campaign="debugged", tokens=2), "debug")
    assert code == 0, err
    pids = _task_pids(tmp_path / "campaigns" / "debugged" / "store.h5")
    assert len(pids) == 5 and set(pids.values()) == {pid}  # every task ran in the submitting process
    # the local executor, for contrast: one child process per stage, never the submitting one
    pid, code, err = _submit_with_pid(tiny_manifest(campaign="local-pids", tokens=2), "local")
    assert code == 0, err
    pids = _task_pids(tmp_path / "campaigns" / "local-pids" / "store.h5")
    assert len(pids) == 5 and len(set(pids.values())) == 2 and pid not in pids.values()


@pytest.mark.slow
def test_packaged_model_replicates_agree_and_divergences_match_the_store(write_manifest, tmp_path):
    """What holds on every machine: replicates are bitwise equal; for every pair of runs the stored
    divergence step, tokens and margins are what the runs' own stored traces say.  Where (and whether)
    bf16 and fp32 diverge depends on the processor's kernels, so no step is asserted."""
    manifest = write_manifest(f"""\
        campaign: real
        output: {tmp_path / "out"}
        model: {{source: smollm2-135m, attn_implementation: eager}}
        prompts: ["The capital of France is"]
        targets: [a100, h100]
        experiments:
          - name: exp4.generate
            id: generate
            params: {{max_new_tokens: 24, top_k: 10}}
            sweep: {{dtype: [float32, bfloat16]}}
          - name: exp4.compare
            id: compare
            needs: [generate]
        """)
    result = run_cli("submit", str(manifest), "--executor", "local")
    assert result.code == 0, result.err
    with Store(tmp_path / "out" / "real" / "store.h5") as store:
        runs = {(r.target, r.numerics["dtype"]): r for r in store.runs("exp4.generate")}
        assert sorted(runs) == [(t, d) for t in ("a100", "h100") for d in ("bfloat16", "float32")]
        for dtype in ("float32", "bfloat16"):  # the two "targets" share this CPU: bitwise equal
            a, b = _datasets(runs[("a100", dtype)]), _datasets(runs[("h100", dtype)])
            assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
        assert runs[("a100", "float32")]["prompts/000/final_hidden"].shape[1] == 576
        table = store.runs("exp4.compare")[0]
        labels = [x.decode() for x in table["run_labels"]]
        by_label = {r.label(): r for r in runs.values()}
        assert sorted(labels) == sorted(by_label)
        for i, first in enumerate(labels):
            for j, second in enumerate(labels):
                _check_pair(table, i, j, by_label[first], by_label[second])


def _check_pair(table, i: int, j: int, ra, rb) -> None:
    """The compare row (i, j) of prompt 0 against the two runs' stored traces, recomputed here."""
    ga, gb = ra["prompts/000/generated_ids"], rb["prompts/000/generated_ids"]
    common = min(len(ga), len(gb))
    differs = np.flatnonzero(ga[:common] != gb[:common])
    d = int(differs[0]) if differs.size else -1
    assert table["first_divergence"][i, j, 0] == d
    hashes = np.flatnonzero(ra["prompts/000/logits_hash"][:common] != rb["prompts/000/logits_hash"][:common])
    assert table["first_bitwise_diff"][i, j, 0] == (int(hashes[0]) if hashes.size else -1)
    if ra.numerics == rb.numerics:  # replicates, and the two "targets" on one CPU: never apart
        assert d == -1 and not hashes.size
    elif ra.numerics["dtype"] != rb.numerics["dtype"]:
        assert hashes.size and hashes[0] == 0  # bf16 and fp32 logits rows differ from the first step
    if d < 0:
        assert np.isnan(table["margin_at_divergence"][i, j, 0]).all()
        assert tuple(table["tokens_at_divergence"][i, j, 0]) == (-1, -1)
        return
    assert np.array_equal(ga[:d], gb[:d]) and ga[d] != gb[d]  # identical contexts up to d
    assert tuple(table["tokens_at_divergence"][i, j, 0]) == (ga[d], gb[d])
    for side, run in enumerate((ra, rb)):  # the margin at d, from the run's own top-k logits
        top = run["prompts/000/topk_logits"][d]
        assert run["prompts/000/topk_ids"][d, 0] == run["prompts/000/generated_ids"][d]
        margin = float(np.float64(top[0]) - np.float64(top[1]))
        assert table["margin_at_divergence"][i, j, 0, side] == run["prompts/000/margin"][d] == margin
