"""Shared by the container tests: the production image (built or found cached), podman's Docker
API socket for the docker CLI, and the CI rule (with CI=true a missing piece fails, else skips)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI") == "true"
BASE = "localhost/toolkit-base:bookworm"
BUILD_TIMEOUT = 1800


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true, where the container tests are mandatory."""
    if CI:
        pytest.fail(f"CI=true: the container tests must run, but {reason}")
    pytest.skip(reason)


def run(argv: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args!r} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def build_image() -> dict[str, str]:
    """Build (or find cached) the base and the production image; {'ref', 'id', 'build_s'}.

    Off CI, TOOLKIT_TEST_IMAGE=<ref> uses an image built before instead (while editing tests: each
    change of a toolkit source file means a rebuild of ~2-3 min); CI always builds."""
    if not CI and os.environ.get("TOOLKIT_TEST_IMAGE"):
        ref = os.environ["TOOLKIT_TEST_IMAGE"]
        return {
            "ref": ref,
            "id": ok(run(["podman", "image", "inspect", "--format", "{{.Id}}", ref])).strip(),
            "build_s": "0",
        }
    if os.geteuid() != 0:
        unavailable("the container build needs root (debootstrap, podman as root): run the tests as root")
    if not shutil.which("podman") and not shutil.which("apt-get"):
        unavailable("podman is not installed and apt-get is not available to install it")
    ok(run(["bash", str(REPO / "containers/build-base.sh")], timeout=BUILD_TIMEOUT))
    start = time.monotonic()
    build = run(["bash", str(REPO / "containers/build.sh"), "--base", BASE], timeout=BUILD_TIMEOUT)
    ok(build)
    lines = dict(line.split("=", 1) for line in build.stdout.splitlines() if "=" in line)
    return {"ref": lines["image"], "id": lines["image_id"], "build_s": f"{time.monotonic() - start:.1f}"}


@pytest.fixture(scope="module")
def image() -> dict[str, str]:
    """The production image built from this working tree (the toolkit inside = the host's)."""
    return build_image()


@pytest.fixture(scope="module")
def podman_socket() -> Iterator[str]:
    """`podman system service` on a private socket; yields a DOCKER_HOST value for the docker CLI."""
    if not shutil.which("docker"):
        unavailable("the docker CLI is not installed")
    sock = Path(tempfile.mkdtemp(prefix="toolkit-podman-")) / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
        shutil.rmtree(sock.parent, ignore_errors=True)


def apptainer_sif(image: dict[str, str]) -> dict[str, str]:
    """A real `apptainer` and a SIF of `image`: {'path': a PATH with `apptainer` first, 'sif'}.

    containers/apptainer-env.sh: Debian sid's apptainer in a trixie rootfs run through ch-run
    (Debian has no apptainer for bookworm), and the SIF built from the image's `podman save`
    archive; both cached (/var/cache/toolkit-apptainer: the rootfs ~1 min once, a SIF ~5-6 min
    per image id).  Off CI, TOOLKIT_TEST_SIF=<path> uses a SIF built before instead."""
    if os.geteuid() != 0:
        unavailable("the Apptainer test needs root (debootstrap, ch-run over the cached rootfs)")
    argv = ["bash", str(REPO / "containers/apptainer-env.sh")]
    given = None if CI else os.environ.get("TOOLKIT_TEST_SIF")
    if not given:
        argv += ["--sif", image["ref"]]
    env = {**os.environ, "USER": os.environ.get("USER", "root")}
    lines = dict(
        line.split("=", 1) for line in ok(run(argv, timeout=BUILD_TIMEOUT, env=env)).splitlines() if "=" in line
    )
    return {"path": f"{os.path.dirname(lines['apptainer'])}:{os.environ['PATH']}", "sif": given or lines["sif"]}
