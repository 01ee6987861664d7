"""Check that the production image's torch fits the transformers it installs, without network.

The image keeps its base's torch (containers/Dockerfile, `ARG BASE=pytorch/pytorch:<torch>-...`;
`ARG TORCH_SPEC=torch==<torch>` for a base without torch; the Makefile's `IMAGE_BASE`, which
`make image` passes as --base) and installs transformers at the
version pinned by containers/build.sh (the host venv's).  transformers declares the torch it needs
(its `torch` extra, e.g. `torch>=2.6`) and disables PyTorch below that, so an image that pairs them
wrongly builds fine and then cannot load a model.  This reads both pins and that requirement and
fails with one line when they do not fit.

    python containers/check_pins.py [DOCKERFILE] [--makefile MAKEFILE] [--transformers VERSION]

Without --transformers the installed transformers (the host venv's, which build.sh pins) is read.
Exit 0 and one `ok:` line when they fit; 1 and one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"
MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
MAKE_BASE = re.compile(r"^IMAGE_BASE \?= pytorch/pytorch:(\d+\.\d+(?:\.\d+)?)-", re.MULTILINE)
BASE_TORCH = re.compile(r"^ARG BASE=pytorch/pytorch:(\d+\.\d+(?:\.\d+)?)-", re.MULTILINE)
SPEC_TORCH = re.compile(r"^ARG TORCH_SPEC=torch==(\d+\.\d+(?:\.\d+)?)\s*$", re.MULTILINE)


def dockerfile_torch(text: str) -> dict[str, str]:
    """The torch versions the Dockerfile pins: {'BASE': ..., 'TORCH_SPEC': ...} (those present)."""
    found = {}
    for name, pattern in (("BASE", BASE_TORCH), ("TORCH_SPEC", SPEC_TORCH)):
        match = pattern.search(text)
        if match:
            found[name] = match.group(1)
    return found


def transformers_torch_requirement(version: str | None = None) -> tuple[str, str]:
    """(transformers version, its torch specifier such as `>=2.6`) from the installed distribution's
    metadata (the `torch` extra); a `version` other than the installed one is refused."""
    installed = metadata.version("transformers")
    if version is not None and version != installed:
        raise SystemExit(
            f"check_pins: transformers {version} is not installed here ({installed} is); "
            "run it in a venv with that version"
        )
    for line in metadata.requires("transformers") or []:
        req = Requirement(line)
        if req.name == "torch" and req.marker is not None and req.marker.evaluate({"extra": "torch"}):
            return installed, str(req.specifier)
    return installed, ""


def problems(dockerfile: Path, transformers: str | None = None, makefile: Path | None = None) -> tuple[list[str], str]:
    """(problems, the ok line): one line per torch pin of the Dockerfile (and the Makefile's
    IMAGE_BASE) that transformers refuses."""
    pins = dockerfile_torch(dockerfile.read_text())
    where = {name: dockerfile for name in pins}
    make_base = MAKE_BASE.search(makefile.read_text()) if makefile is not None and makefile.is_file() else None
    if make_base:
        pins["IMAGE_BASE"], where["IMAGE_BASE"] = make_base.group(1), makefile
    version, spec = transformers_torch_requirement(transformers)
    if "BASE" not in pins:
        return [f"{dockerfile}: ARG BASE names no pytorch/pytorch:<torch>-... image; cannot check its torch"], ""
    from packaging.specifiers import SpecifierSet

    wanted = SpecifierSet(spec)
    out = [
        f"{where[name]}: {'' if name == 'IMAGE_BASE' else 'ARG '}{name} pins torch {torch} "
        f"but transformers {version} needs torch{spec} (it disables "
        f"PyTorch below that): pin a base (and TORCH_SPEC) with torch{spec}, or pin an older transformers"
        for name, torch in pins.items()
        if Version(torch) not in wanted
    ]
    ok = (
        f"ok: {', '.join(f'{k} torch {v}' for k, v in pins.items())} fit transformers {version} (torch{spec or ' any'})"
    )
    return out, ok


def main(argv: list[str] | None = None) -> int:
    """The command line: print the problems (exit 1) or the ok line (exit 0)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dockerfile", nargs="?", type=Path, default=DOCKERFILE)
    parser.add_argument(
        "--makefile", type=Path, default=MAKEFILE, help="Makefile with IMAGE_BASE (default: the repo's)"
    )
    parser.add_argument("--transformers", help="the transformers version the image installs (default: installed)")
    args = parser.parse_args(argv)
    found, ok = problems(args.dockerfile, args.transformers, args.makefile)
    print("\n".join(found) if found else ok)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
