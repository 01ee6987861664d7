"""The production image's torch fits the transformers it installs (issue 13 §5), checked without
network: containers/check_pins.py reads the Dockerfile's torch pins (the base image's tag and
TORCH_SPEC) and transformers' declared torch requirement; the image build (Dockerfile step 2) and
the Apptainer image's %test run the same check inside the image.

transformers' requirement is read here from the installed distribution's metadata, independently
of the script; the old base (torch 2.5.1) must be refused with its exact line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

SCRIPT = REPO / "containers" / "check_pins.py"
DOCKERFILE = REPO / "containers" / "Dockerfile"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def _torch_spec() -> str:
    for line in metadata.requires("transformers") or []:
        req = Requirement(line)
        if req.name == "torch" and 'extra == "torch"' in str(req.marker):
            return str(req.specifier)
    raise AssertionError("transformers declares no torch extra")


def test_the_dockerfile_pins_a_torch_transformers_accepts():
    spec = _torch_spec()
    base = re.search(r"^ARG BASE=pytorch/pytorch:([0-9.]+)-", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    pinned = re.search(r"^ARG TORCH_SPEC=torch==([0-9.]+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    make = re.search(r"^IMAGE_BASE \?= pytorch/pytorch:([0-9.]+)-", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert Version(base) in SpecifierSet(spec) and pinned == base == make.group(1)
    result = _check()
    assert (result.returncode, result.stdout) == (
        0,
        f"ok: BASE torch {base}, TORCH_SPEC torch {pinned}, IMAGE_BASE torch {base} "
        f"fit transformers {metadata.version('transformers')} (torch{spec})\n",
    )


def test_the_old_base_is_refused_with_one_line_per_pin(tmp_path):
    spec, version = _torch_spec(), metadata.version("transformers")
    assert Version("2.5.1") not in SpecifierSet(spec)  # the pair this check exists for
    old = tmp_path / "Dockerfile"
    text = re.sub(
        r"(?m)^ARG BASE=.*$", "ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", DOCKERFILE.read_text()
    )
    old.write_text(re.sub(r"(?m)^ARG TORCH_SPEC=.*$", "ARG TORCH_SPEC=torch==2.5.1", text))
    makefile = tmp_path / "Makefile"
    makefile.write_text("IMAGE_BASE ?= pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime\n")
    result = _check(str(old), "--makefile", str(makefile))
    advice = (
        f"(it disables PyTorch below that): pin a base (and TORCH_SPEC) with torch{spec}, or pin an older transformers"
    )
    assert (result.returncode, result.stdout.splitlines()) == (
        1,
        [
            f"{old}: ARG BASE pins torch 2.5.1 but transformers {version} needs torch{spec} {advice}",
            f"{old}: ARG TORCH_SPEC pins torch 2.5.1 but transformers {version} needs torch{spec} {advice}",
            f"{makefile}: IMAGE_BASE pins torch 2.5.1 but transformers {version} needs torch{spec} {advice}",
        ],
    )


def test_the_in_image_checks_are_valid_and_pass_with_the_hosts_pair():
    """The Dockerfile's build-time check and the Apptainer %test line, run here: valid Python that
    passes with this venv's torch and transformers (a pair transformers accepts)."""
    joined = DOCKERFILE.read_text().replace("\\\n", "")  # Dockerfile line continuations
    (docker,) = re.findall(r'python -c "(import sys, torch, transformers;[^"]*)"', joined)
    (apptainer,) = re.findall(
        r'python -c "(import sys, torch, transformers;[^"]*)"', (REPO / "containers" / "toolkit.def").read_text()
    )
    assert "is_torch_available()" in docker and "is_torch_available()" in apptainer
    runner = (  # both in one process (importing transformers is the slow part); each must exit 0
        "import sys\n"
        f"for code in {[docker, apptainer]!r}:\n"
        "    try:\n"
        "        exec(code, {})\n"
        "    except SystemExit as end:\n"
        "        sys.exit(end.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
