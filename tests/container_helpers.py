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
        return {"ref": ref, "id": ok(run(["podman", "image", "inspect", "--format", "{{.Id}}", ref])).strip(),
                "build_s": "0"}
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
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


APPTAINER_ENV_IMAGE = "localhost/apptainer-env:trixie"
APPTAINER_SHIM = '''\
#!{python}
"""`apptainer` for a host without it (Debian bookworm has no package): Debian sid's apptainer,
installed in the podman image {env_image}, run in a privileged container with the folders the
command names (--bind, --pwd, the SIF) bound at the same paths and APPTAINERENV_* passed.  This
VM grants no CAP_SYS_RESOURCE, which apptainer asks for as root: dropped for `exec`."""
import os, sys
args = sys.argv[1:]
folders = set()
for i, arg in enumerate(args[:-1]):
    if arg in ("--bind", "--pwd"):
        folders.add(args[i + 1].split(":")[0])
folders.update(os.path.dirname(a) for a in args if a.endswith(".sif"))
if "exec" in args:
    at = args.index("exec") + 1
    args[at:at] = ["--drop-caps", "CAP_SYS_RESOURCE"]
argv = ["podman", "run", "--rm", "--privileged", "--network", "none", "-e", "APPTAINERENV_*"]
for folder in sorted(folders):
    argv += ["-v", f"{{folder}}:{{folder}}"]
os.execvp("podman", [*argv, "{env_image}", "apptainer", *args])
'''


def apptainer_shim(folder: Path) -> Path:
    """Write the `apptainer` shim into folder/bin; returns that bin folder (prepend it to PATH)."""
    import sys

    shim = folder / "bin" / "apptainer"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(APPTAINER_SHIM.format(python=sys.executable, env_image=APPTAINER_ENV_IMAGE))
    shim.chmod(0o755)
    return shim.parent
