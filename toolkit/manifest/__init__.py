"""Load and validate a campaign manifest — the only place YAML is parsed.

`load_manifest(path)` returns a frozen `Manifest` or raises `ManifestError` listing every
problem with `file:line:col: field.path: message`, one line each.  Validation is complete before
anything is created: unknown keys, types, ranges, experiment names (did-you-mean), targets known
to the site profile, campaign and id names, duplicate ids, `needs` (unknown, cyclic, missing
inputs, upstream entries that give a task no run to read), experiment params checked against
each experiment's `Params` dataclass, and what the experiments declare (`toolkit.experiments`):
prompts for those that read them, eager attention for those that take JVPs.  One entry's error
hides no other problem.  A check that breaks on an unforeseen input still gives one located line
("internal error"), never a traceback.  The environment (model files, container images, the
cluster) is checked later, by `toolkit.launch.preflight`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from toolkit.errors import ManifestError
from toolkit.manifest.checker import Checker
from toolkit.manifest.located import YamlProblem, load_located
from toolkit.manifest.model import (
    Container,
    ExperimentSpec,
    Manifest,
    ModelSpec,
    Numerics,
    Resources,
    SiteProfile,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024

__all__ = [
    "Container",
    "ExperimentSpec",
    "Manifest",
    "ModelSpec",
    "Numerics",
    "Resources",
    "SiteProfile",
    "load_manifest",
]


def load_manifest(path: str | Path, site: str | None = None) -> Manifest:
    """Read, parse and validate the manifest at `path`; `site` overrides the manifest's `site:`."""
    path = Path(path)
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([f"{shown}: no such file"]) from None
    except OSError as err:
        raise ManifestError([f"{shown}: cannot read: {err.strerror}"]) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError([f"{shown}:1:1: manifest is larger than {MAX_MANIFEST_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1  # everything before err.start is valid UTF-8
        line = raw.count(b"\n", 0, err.start) + 1
        where = f"{line}:{len(raw[line_start : err.start].decode('utf-8')) + 1}"
        raise ManifestError([f"{shown}:{where}: not UTF-8 text ({err.reason} at byte {err.start})"]) from None
    try:
        located = load_located(text, shown)
    except YamlProblem as err:
        raise ManifestError([err.message]) from None
    checker = Checker(located, path.resolve().parent, site_override=site)
    try:
        manifest = checker.check(path=path, text=text, sha256=hashlib.sha256(raw).hexdigest())
    except (ImportError, SyntaxError):  # a broken installation, not a bad manifest: show the traceback
        raise
    except Exception as err:  # a check that broke on an input nobody foresaw: still one line, exit 2
        checker.problems.append(
            f"{shown}:1:1: cannot validate this manifest (internal error {type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}); please report it with the manifest"
        )
        manifest = None
    if checker.problems or manifest is None:
        raise ManifestError([_one_line(p) for p in checker.problems] or [f"{shown}:1:1: invalid manifest"])
    return manifest


def _one_line(problem: str) -> str:
    """A problem as one line: a line break inside a message (e.g. from an OS error) is escaped."""
    return problem.replace("\r", "\\r").replace("\n", "\\n")
