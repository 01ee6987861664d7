"""The Slurm resource preflight: the parser of `scontrol show node/partition -o` on captured text,
the check of one request, and end to end on the real test cluster (`toolkit plan/submit
--executor slurm`: exit 2, one line per problem, nothing created or submitted); `--executor auto`
with and without sbatch on PATH."""
# ruff: noqa: E501  (captured scontrol lines are kept whole)

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from slurm_helpers import manifest_text, slurm_cluster  # noqa: F401  (slurm_cluster is a fixture)

from toolkit.launch.slurm_resources import (
    Cluster,
    Node,
    Partition,
    Request,
    Shortfall,
    check_request,
    constraint_matches,
    parse_gres,
    parse_minutes,
    parse_nodes,
    parse_partitions,
    parse_records,
)

# `scontrol show node -o` of the test cluster (slurm 22.05.8), plus a third node as a real site
# prints it: sockets in its GRES, a MemSpecLimit, no CPUEfctv (older slurm), a Reason with spaces.
NODES = """\
NodeName=a100-node Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=8 CPUTot=8 CPULoad=0.28 AvailableFeatures=a100,gpu ActiveFeatures=a100,gpu Gres=gpu:a100:4 NodeAddr=127.0.0.1 NodeHostName=localhost Port=17001 Version=22.05.8 OS=Linux 6.18.44-fc-v1272 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=16000 AllocMem=0 FreeMem=20300 Sockets=8 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=batch,a100,high  BootTime=2026-12-06T07:14:02 SlurmdStartTime=2026-12-06T07:15:56 LastBusyTime=2026-12-06T07:15:56 CfgTRES=cpu=8,mem=16000M,billing=8,gres/gpu=4,gres/gpu:a100=4 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
NodeName=h100-node Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=8 CPUTot=8 CPULoad=0.28 AvailableFeatures=h100,gpu ActiveFeatures=h100,gpu Gres=gpu:h100:4 NodeAddr=127.0.0.1 NodeHostName=localhost Port=17002 Version=22.05.8 OS=Linux 6.18.44-fc-v1272 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=16000 AllocMem=0 FreeMem=20300 Sockets=8 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=batch,h100,high  BootTime=2026-12-06T07:14:02 SlurmdStartTime=2026-12-06T07:15:56 LastBusyTime=2026-12-06T07:15:56 CfgTRES=cpu=8,mem=16000M,billing=8,gres/gpu=4,gres/gpu:h100=4 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
NodeName=big01 Arch=x86_64 CoresPerSocket=32 CPUAlloc=0 CPUTot=64 AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:a100:8(S:0-1),mps:200 NodeAddr=big01 RealMemory=515000 MemSpecLimit=15000 State=DOWN+DRAIN ThreadsPerCore=1 Partitions=long Reason=fan broken, waiting for parts [root@2026-12-01T10:00:00]
"""

PARTITIONS = """\
PartitionName=batch AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=5 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=a100-node,h100-node PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=REQUEUE State=UP TotalCPUs=16 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=16,mem=32000M,node=2,billing=16,gres/gpu=8,gres/gpu:a100=4,gres/gpu:h100=4
PartitionName=a100 AllowGroups=ALL Default=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED Nodes=a100-node State=UP DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED
PartitionName=h100 AllowGroups=ALL Default=NO MaxNodes=UNLIMITED MaxTime=02:00:00 MaxCPUsPerNode=4 Nodes=h100-node State=UP DefMemPerNode=UNLIMITED MaxMemPerNode=8000
PartitionName=high AllowGroups=ALL Default=NO MaxTime=UNLIMITED Nodes=a100-node,h100-node State=UP MaxMemPerNode=UNLIMITED
PartitionName=long AllowGroups=ALL Default=NO MaxTime=7-00:00:00 Nodes=big01 State=UP MaxMemPerNode=UNLIMITED
"""


def _cluster() -> Cluster:
    return Cluster(nodes=tuple(parse_nodes(NODES)), partitions=parse_partitions(PARTITIONS))


def _request(**changes) -> Request:
    base = {
        "partitions": ("batch",),
        "constraint": "a100",
        "gpus": 1,
        "gpu_type": "a100",
        "cpus": 4,
        "mem_mb": 4096,
        "time_min": 30,
        "mem_gb": 4.0,
    }
    return Request(**{**base, **changes})


# --- the parser ------------------------------------------------------------------------------------


def test_parse_records_keeps_values_with_spaces():
    records = parse_records(NODES)
    assert len(records) == 3
    assert records[0]["OS"] == "Linux 6.18.44-fc-v1272 #1 SMP PREEMPT_DYNAMIC @0"
    assert records[0]["AllocTRES"] == "" and records[0]["Partitions"] == "batch,a100,high"
    assert records[2]["Reason"] == "fan broken, waiting for parts [root@2026-12-01T10:00:00]"
    assert records[2]["State"] == "DOWN+DRAIN"


def test_parse_nodes_of_captured_scontrol_text():
    assert parse_nodes(NODES) == [
        Node("a100-node", 8, 16000, ("a100", "gpu"), {("gpu", "a100"): 4}, ("batch", "a100", "high")),
        Node("h100-node", 8, 16000, ("h100", "gpu"), {("gpu", "h100"): 4}, ("batch", "h100", "high")),
        Node("big01", 64, 500000, (), {("gpu", "a100"): 8, ("mps", ""): 200}, ("long",)),
    ]


def test_parse_partitions_of_captured_scontrol_text():
    parts = parse_partitions(PARTITIONS)
    assert list(parts) == ["batch", "a100", "h100", "high", "long"]
    assert parts["batch"] == Partition("batch", True, None, "UNLIMITED", None, None)
    assert parts["h100"] == Partition("h100", False, 120, "02:00:00", 8000, 4)
    assert parts["long"] == Partition("long", False, 10080, "7-00:00:00", None, None)


def test_parse_gres_minutes_and_constraints():
    assert parse_gres("gpu:a100:4(S:0-1),gpu:2,mps:200,shard") == {
        ("gpu", "a100"): 4,
        ("gpu", ""): 2,
        ("mps", ""): 200,
        ("shard", ""): 1,
    }
    assert parse_gres("(null)") == {} and parse_gres("") == {}
    assert [
        parse_minutes(t)
        for t in ("UNLIMITED", "INFINITE", "45", "30:00", "30:30", "2:00:00", "1-00:00:00", "2-12", "1-01:30", "junk")
    ] == [None, None, 45, 30, 31, 120, 1440, 3600, 1530, None]
    features = frozenset({"a100", "nvlink"})
    assert constraint_matches("a100", features) and not constraint_matches("h100", features)
    assert constraint_matches("a100&nvlink", features) and not constraint_matches("a100&ib", features)
    assert constraint_matches("h100|a100", features) and constraint_matches("[h100|a100]&nvlink", features)
    assert not constraint_matches("(h100|v100)&nvlink", features)
    assert constraint_matches("a100*2", features)
    assert constraint_matches("a100&(", features)  # unreadable: never a reason to refuse


# --- the check of one request ----------------------------------------------------------------------


def test_a_request_the_cluster_can_give_has_no_shortfall():
    cluster = _cluster()
    assert check_request(cluster, _request()) == []
    assert check_request(cluster, _request(partitions=(), cpus=8, mem_mb=16000)) == []  # the default partition
    assert check_request(cluster, _request(partitions=("nosuch", "a100"))) == []  # one of a,b fits
    assert check_request(cluster, _request(constraint=None, gpu_type=None, gpus=4)) == []  # --gpus, any type


def test_each_shortfall_names_the_request_and_the_best_offer():
    cluster = _cluster()
    assert check_request(cluster, _request(mem_mb=32768, mem_gb=32)) == [
        Shortfall("mem", "32 GB requested, the largest node of partition batch with gpu:a100 has 15.6 GB")
    ]
    assert check_request(cluster, _request(cpus=12, gpus=5)) == [
        Shortfall("gpus", "5 × gpu:a100 requested, the largest node of partition batch with gpu:a100 has 4"),
        Shortfall("cpus", "12 CPUs requested, the largest node of partition batch with gpu:a100 has 8"),
    ]
    assert check_request(cluster, _request(constraint=None, gpus=0, gpu_type=None, mem_mb=20480, mem_gb=20)) == [
        Shortfall("mem", "20 GB requested, the largest node of partition batch has 15.6 GB")
    ]
    assert check_request(
        cluster,
        _request(
            partitions=("h100",), constraint="h100", gpu_type="h100", cpus=6, mem_mb=10240, mem_gb=10, time_min=180
        ),
    ) == [
        Shortfall("cpus", "6 CPUs requested, partition h100 allows at most 4 per node (MaxCPUsPerNode)"),
        Shortfall("mem", "10 GB requested, partition h100 allows at most 7.8 GB per node (MaxMemPerNode)"),
        Shortfall("time", "180 min requested, partition h100 allows at most 120 min (MaxTime=02:00:00)"),
    ]


def test_partition_feature_and_gres_mismatches():
    cluster = _cluster()
    assert check_request(cluster, _request(partitions=("gpu",))) == [
        Shortfall(
            "partition", "partition 'gpu' does not exist on this cluster; partitions: batch, a100, h100, high, long"
        )
    ]
    assert check_request(cluster, _request(constraint="v100")) == [
        Shortfall("constraint", "'v100' matches no node of partition batch (features there: a100,gpu; h100,gpu)")
    ]
    assert check_request(cluster, _request(constraint=None, gpu_type="v100")) == [
        Shortfall("gres", "gpu:v100 is on no node of partition batch (GRES there: gpu:a100:4, gpu:h100:4)")
    ]
    assert check_request(
        cluster, _request(partitions=("long",), constraint=None, mem_mb=500 * 1024, mem_gb=500, cpus=64, time_min=10081)
    ) == [
        Shortfall("mem", "500 GB requested, the largest node of partition long with gpu:a100 has 488.3 GB"),
        Shortfall("time", "10081 min requested, partition long allows at most 10080 min (MaxTime=7-00:00:00)"),
    ]


def test_resources_that_fit_separately_but_not_together():
    nodes = (Node("fat", 4, 64000, (), {}, ("p",)), Node("wide", 32, 8000, (), {}, ("p",)))
    cluster = Cluster(nodes=nodes, partitions={"p": Partition("p", True, None, "UNLIMITED", None, None)})
    assert check_request(
        cluster, _request(partitions=("p",), constraint=None, gpus=0, cpus=16, mem_mb=32768, mem_gb=32)
    ) == [Shortfall("resources", "16 CPUs, 32 GB together fit no single node of partition p")]


# --- end to end on the real test cluster ------------------------------------------------------------

MAIN = REPO / "manifests" / "gpu_divergence.yaml"


def _main_asking(tmp_path: Path, mem_gb: str) -> tuple[Path, str]:
    """The main manifest with another mem_gb, writing into tmp_path; (path, `file:line:col` of mem_gb)."""
    text = MAIN.read_text().replace("output: campaigns", f"output: {tmp_path / 'campaigns'}")
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("resources:"))
    lines[row] = lines[row].replace("mem_gb: 4,", f"mem_gb: {mem_gb},")
    path = tmp_path / "big.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, f"{path}:{row + 1}:{lines[row].index('mem_gb: ') + len('mem_gb: ') + 1}"


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_main_manifest_passes_the_slurm_preflight_of_the_test_cluster():
    result = run_cli(
        "plan", "manifests/gpu_divergence.yaml", "--executor", "slurm", "--site", "testcluster", timeout=120
    )
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == (
        "slurm preflight: 3 array(s) and the gather job fit the nodes of 2 node(s) in 4 partition(s)"
    )
    assert (
        "  array s1-a100: 6 task(s)  --partition=batch --constraint=a100 --gres=gpu:a100:1 --time=60 "
        "--cpus-per-task=4 --mem=4096M" in result.out.splitlines()
    )


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_manifest_asking_32_gb_is_refused_before_anything_is_created(tmp_path):
    manifest, where = _main_asking(tmp_path, "32")
    expected = [
        f"error: {where}: resources.mem_gb: 32 GB requested, the largest node of partition batch with "
        f"gpu:{gpu} has 15.6 GB"
        for gpu in ("a100", "h100")
    ]
    expected.append(
        f"error: {where}: resources.mem_gb: 32 GB requested, the largest node of partition batch has 15.6 GB"
    )  # the compare task: a campaign-level job, no GPU
    for command in ("plan", "submit", "validate"):
        result = run_cli(command, str(manifest), "--executor", "slurm", "--site", "testcluster", timeout=120)
        assert (result.code, result.out, result.err.splitlines()) == (2, "", expected), command
    assert not (tmp_path / "campaigns").exists()
    names = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    assert "gpu-divergence" not in names


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_site_profile_keys_are_named_for_what_the_cluster_lacks(tmp_path):
    site = tmp_path / "bad.yaml"
    site.write_text(
        "name: bad\ndefaults: {partition: batch}\n"
        "gather: {partition: batch, mem_gb: 64}\n"
        "targets:\n"
        "  a100: {constraint: v100, gres: 'gpu:a100:1'}\n"
        "  h100: {partition: hopper, gres: 'gpu:h100:1'}\n"
    )
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        manifest_text("bad-site", tmp_path / "campaigns", compare=False).replace("site: testcluster", f"site: {site}")
    )
    result = run_cli("plan", str(manifest), "--executor", "slurm", timeout=120)
    assert result.code == 2, result.err
    assert result.err.splitlines() == [
        f"error: {site}:5:22: targets.a100.constraint: 'v100' matches no node of partition batch "
        "(features there: a100,gpu; h100,gpu)",
        f"error: {site}:6:21: targets.h100.partition: partition 'hopper' does not exist on this cluster; "
        "partitions: batch, a100, h100, high",
        f"error: {site}:3:36: gather.mem_gb: 64 GB requested, the largest node of partition batch has 15.6 GB",
    ]
    assert not (tmp_path / "campaigns").exists()


# --- --executor auto -------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_executor_auto_is_slurm_with_sbatch_on_path(tmp_path):
    manifest = tmp_path / "auto.yaml"
    manifest.write_text(
        manifest_text("h11-auto-slurm", tmp_path / "campaigns", repeats=1, compare=False, targets="[a100]")
    )
    result = run_cli("submit", str(manifest), "--no-wait", "--no-plot", timeout=300)  # --executor auto
    folder = tmp_path / "campaigns" / "h11-auto-slurm"
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == (
        f"campaign h11-auto-slurm: 1 task(s), 0 already complete, 1 to run (slurm executor) in {folder}"
    )
    assert (folder / "slurm.json").is_file()
    assert run_cli("cancel", str(folder), timeout=120).code == 0


def test_executor_auto_is_local_without_sbatch_on_path(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    manifest = tmp_path / "auto.yaml"
    manifest.write_text(
        manifest_text("h11-auto-local", tmp_path / "campaigns", repeats=1, compare=False, targets="[a100]", tokens=2)
    )
    result = run_cli("submit", str(manifest), "--no-plot", env={"PATH": str(empty)}, timeout=600)
    folder = tmp_path / "campaigns" / "h11-auto-local"
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == (
        f"campaign h11-auto-local: 1 task(s), 0 already complete, 1 to run (local executor) in {folder}"
    )
    assert not (folder / "slurm.json").exists() and (folder / "store.h5").is_file()
    # and --executor slurm says what is missing instead of falling back
    result = run_cli("submit", str(manifest), "--executor", "slurm", env={"PATH": str(empty)}, timeout=120)
    assert (result.code, result.err) == (
        2,
        "error: --executor slurm needs sbatch on PATH; use --executor local on this machine\n",
    )


def test_plan_executor_slurm_without_scontrol_and_auto_without_sbatch(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty)}
    result = run_cli("plan", "manifests/gpu_divergence.yaml", "--executor", "slurm", env=env, timeout=120)
    assert (result.code, result.out, result.err) == (
        2,
        "",
        "error: --executor slurm checks the cluster's resources with scontrol, which is not on PATH; run it "
        "on a login node of the cluster\n",
    )
    result = run_cli("plan", "manifests/gpu_divergence.yaml", "--executor", "auto", env=env, timeout=120)
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith("  gather 2: ")  # local: no Slurm check, no preflight line
