"""Targets that are checked (issue 13 §3, §5): a site profile target's `device` and `expect` are
validated with located messages, and the worker checks the real device before it loads the model.

The device here is a CPU, named `cpu (<processor>)` from /proc/cpuinfo (read again in the test,
independently of the toolkit): match and mismatch are exercised with `device_name` regexes against
that text, `memory_gb_min` against MemTotal, and a GPU target (gres, no `device: cpu`) against a
process that sees no CUDA device.  One local campaign holds all four outcomes; the test cluster
runs one mismatch in a real Slurm job (its nodes are CPUs too).
"""

from __future__ import annotations

import json
import platform
import socket
import textwrap
from pathlib import Path

import pytest
from conftest import ONE_THREAD, run_cli
from slurm_helpers import manifest_text, slurm_cluster  # noqa: F401  (slurm_cluster is a fixture)

from toolkit.manifest.site import load_site, target_device
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.reader import Store


def _processor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    raise AssertionError("no MemTotal")


CPU = f"cpu ({_processor()})"
SITE = """\
name: checked
defaults: {partition: batch}
targets:
  ok:   {device: cpu, expect: {device_name: '^cpu \\(', memory_gb_min: 0.5}}
  name: {device: cpu, expect: {device_name: 'A100'}}
  gpu:  {gres: "gpu:a100:1"}
  mem:  {device: cpu, expect: {memory_gb_min: 100000}}
"""
MANIFEST = """\
campaign: checked
output: {output}
site: site.yaml
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
targets: [ok, name, gpu, mem]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
"""


def _site(tmp_path: Path, text: str) -> tuple[object, list[str]]:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return load_site(path)


def test_expect_is_validated_with_located_messages(tmp_path):
    profile, problems = _site(
        tmp_path,
        """\
        targets:
          a: {gres: "gpu:a100:1", expect: {device_nme: 'A100', sm_count: 0}}
          b: {device: cpu, expect: {device_name: 'A1(00', sm_count: 108}}
          c: {device: gpu, expect: {memory_gb_min: -1}}
          d: {expect: []}
        """,
    )
    path = tmp_path / "s.yaml"
    assert profile is None
    assert problems == [
        f"{path}:2:36: unknown expectation 'device_nme'; did you mean 'device_name'? "
        "valid: device_name, sm_count, memory_gb_min",
        f"{path}:2:66: sm_count must be an integer >= 1, got 0",
        f"{path}:3:42: device_name 'A1(00' is not a valid regular expression "
        "(missing ), unterminated subpattern at position 2)",
        f"{path}:3:61: sm_count applies to CUDA devices; this target is a CPU target "
        "(remove sm_count, or make it a GPU target with device: cuda)",
        f"{path}:4:15: device must be one of cuda, cpu, got 'gpu'",
        f"{path}:4:44: memory_gb_min must be a number > 0, got -1",
        f"{path}:5:15: expect must be a mapping with some of device_name, sm_count, memory_gb_min",
    ]


def test_manifest_with_a_bad_expect_is_refused_at_validation(tmp_path):
    (tmp_path / "site.yaml").write_text(SITE.replace("'A100'", "'A1['"))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "campaigns"))
    result = run_cli("validate", str(manifest))
    assert result.code == 2
    assert result.err == (
        f"error: {tmp_path / 'site.yaml'}:5:45: device_name 'A1[' is not a valid regular expression "
        "(unterminated character set at position 2)\n"
    )


def test_target_kind_and_where_it_is_checked(tmp_path):
    (tmp_path / "site.yaml").write_text(SITE)
    profile, problems = load_site(tmp_path / "site.yaml")
    assert problems == [] and profile is not None
    assert target_device(profile, "gpu", 1).kind == "cuda"
    assert target_device(profile, "gpu", 0).kind == "cpu"  # the manifest asks no GPU: Slurm gives none
    assert target_device(profile, "ok", 1).kind == "cpu" and target_device(profile, "ok", 1).checked_locally
    assert target_device(profile, "any", 1) is None
    packaged = Path(__file__).resolve().parents[1] / "toolkit" / "sites"
    default, _ = load_site(packaged / "default.yaml")
    a100 = target_device(default, "a100", 1)
    assert (a100.kind, a100.device_name, a100.sm_count, a100.checked_locally) == ("cuda", "A100", 108, False)
    cluster, _ = load_site(packaged / "testcluster.yaml")
    assert target_device(cluster, "h100", 1).kind == "cpu" and target_device(cluster, "h100", 1).checked_locally


def test_expect_match_and_mismatches_on_the_local_executor(tmp_path):
    """ok is stored; name, gpu and mem each fail with their one line and store nothing."""
    (tmp_path / "site.yaml").write_text(SITE)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "campaigns"))
    result = run_cli("submit", str(manifest), "--executor", "local", "--no-plot", env=ONE_THREAD)
    assert result.code == 1, result.err
    folder = CampaignDir(tmp_path / "campaigns" / "checked")
    plan = folder.read_plan()
    by_target = {t["target"]: tid for tid, t in plan["tasks"].items()}
    node = socket.gethostname()
    expected = {
        "name": f"target name expects device_name /A100/, landed on {CPU} on node {node}",
        "gpu": (
            f"target gpu is a GPU target but this process sees no CUDA device (CUDA_VISIBLE_DEVICES=''): "
            f"landed on {CPU} on node {node}; a GPU target never falls back to CPU: fix the job's GPU "
            "(driver, container GPU set-up, gres) or declare the target `device: cpu` in the site profile"
        ),
        "mem": f"target mem expects memory_gb_min 100000, landed on {CPU} ({_mem_gb()} GB) on node {node}",
    }
    failed = folder.failed_tasks()
    assert {t: failed[by_target[t]]["error"] for t in expected} == {
        t: f"DeviceMismatch: {line}" for t, line in expected.items()
    }
    assert sorted(failed) == sorted(by_target[t] for t in expected)
    first = failed[min(failed)]["error"]  # submit names the first failed task's report
    assert f"3 task(s) did not complete ({first}); logs in" in result.err
    with Store(folder.store_path) as store:
        runs = list(store.runs())
    assert [r.target for r in runs] == ["ok"]  # nothing stored for the three that failed
    identity = runs[0].attrs["provenance"]["device_identity"]
    import torch

    assert identity["device"] == "cpu" and identity["processor"] == _processor()
    assert identity["torch"] == torch.__version__ and identity["blas"].split()[0] in ("mkl", "openblas", "unknown")
    assert set(folder.completed_shards()) == {by_target["ok"]}
    status = run_cli("status", str(folder.root))
    for target, line in expected.items():
        assert f"failed   generate {target} r0  DeviceMismatch: {line}" in status.out
    assert status.out.startswith("4 task(s): 3 failed, 1 stored")


@pytest.mark.slurm
def test_expect_mismatch_on_the_test_cluster(tmp_path, slurm_cluster):
    """testcluster's a100 (a CPU node, expecting `cpu (`) runs; an h100 copy that expects an H100
    fails in its Slurm job on h100-node, stores nothing, and status and submit --wait report it."""
    packaged = Path(__file__).resolve().parents[1] / "toolkit" / "sites" / "testcluster.yaml"
    site = tmp_path / "tc.yaml"
    site.write_text(
        packaged.read_text().replace(
            """h100: {constraint: h100, gres: "gpu:h100:1", device: cpu, expect: {device_name: '^cpu \\(',""",
            """h100: {constraint: h100, gres: "gpu:h100:1", device: cpu, expect: {device_name: 'H100',""",
        )
    )
    assert "device_name: 'H100'" in site.read_text()
    manifest = tmp_path / "m.yaml"
    text = manifest_text("tc", tmp_path / "campaigns", repeats=1, tokens=2, prompts='["x"]', compare=False)
    manifest.write_text(text.replace("site: testcluster", f"site: {site}"))
    result = run_cli("submit", str(manifest), "--executor", "slurm", "--wait", "--no-plot", timeout=300)
    folder = CampaignDir(tmp_path / "campaigns" / "tc")
    by_target = {t["target"]: tid for tid, t in folder.read_plan()["tasks"].items()}
    assert result.code == 1, result.out + result.err
    assert f"1 task(s) failed: {by_target['h100']}" in result.err
    line = f"target h100 expects device_name /H100/, landed on {CPU} on node h100-node"
    assert folder.failed_tasks()[by_target["h100"]]["error"] == f"DeviceMismatch: {line}"
    # the stage's gather waits on its arrays (afterok), so a100's shard stays published, ungathered
    assert set(folder.completed_shards()) == {by_target["a100"]} and not folder.store_path.exists()
    status = run_cli("status", str(folder.root))
    assert status.out.startswith("2 task(s): 1 failed, 1 shard")
    assert f"failed   generate h100 r0  slurm FAILED on h100-node  DeviceMismatch: {line}" in status.out
    assert json.loads((folder.root / "plan.json").read_text())["tasks"][by_target["a100"]]["target_device"] == {
        "target": "a100",
        "kind": "cpu",
        "device_name": "^cpu \\(",
        "sm_count": None,
        "memory_gb_min": 1,
        "checked_locally": True,
    }
