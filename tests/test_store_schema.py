"""The store's schema version is checked on every open: readers (`show`, `plot`, `status`,
`Store`), `gather` and `submit` refuse a store of another schema with exit 2 and one line, and
leave it unchanged byte for byte.  Schema 1 is the only version there has been (git history of
toolkit/store/schema.py), so there is no migration: an older or unversioned store is refused
the same way, tested with fabricated versions."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import pytest
from conftest import run_cli

from toolkit import __version__
from toolkit.store import schema
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.reader import Store

NEWER = (
    "{store}: written by toolkit 9.9.0 with store schema 2, newer than schema 1 that this toolkit "
    f"{__version__} reads; upgrade toolkit to 9.9.0 or later to read or gather it (the store was not changed)"
)
OLDER = (
    "{store}: written by toolkit 0.0.1 with store schema 0, older than schema 1 that this toolkit "
    f"{__version__} reads, and there is no migration; read it with toolkit 0.0.1 (the store was not changed)"
)
UNVERSIONED = (
    "{store}: no schema_version attribute, so not a store written by toolkit; give the store.h5 of a campaign folder"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, campaign folder) of one real tiny campaign, run once for the module."""
    from conftest import TINY_MANIFEST

    root = tmp_path_factory.mktemp("schema")
    manifest = root / "schema.yaml"
    manifest.write_text(TINY_MANIFEST.format(campaign="schema", output=root / "campaigns", tokens=3))
    result = run_cli("submit", str(manifest), "--executor", "local", "--no-plot")
    assert result.code == 0, result.err
    return manifest, root / "campaigns" / "schema"


def _restamp(folder: Path, version: int | None, toolkit_version: str) -> Path:
    """Make the store look written by another toolkit: its schema_version and toolkit_version attrs."""
    store = CampaignDir(folder).store_path
    with h5py.File(store, "a") as handle:
        if version is None:
            del handle.attrs["schema_version"]
        else:
            handle.attrs["schema_version"] = version
        handle.attrs["toolkit_version"] = toolkit_version
    return store


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    manifest, folder = finished
    copy = tmp_path / "campaigns" / folder.name
    shutil.copytree(folder, copy)
    text = manifest.read_text().replace(str(folder.parent), str(copy.parent))
    (tmp_path / manifest.name).write_text(text)
    return tmp_path / manifest.name, copy


def test_newer_schema_is_refused_by_every_reader_and_gather_and_left_unchanged(finished, tmp_path):
    manifest, folder = _copy(finished, tmp_path)
    store = _restamp(folder, 2, "9.9.0")
    before = _sha256(store)
    line = f"error: {NEWER.format(store=store)}\n"
    commands = [
        ("show", str(folder)),
        ("show", str(store), "--json"),
        ("status", str(folder)),
        ("plot", str(folder)),
        ("gather", str(folder)),
        ("gather", str(folder), "--rebuild"),
        ("submit", str(manifest), "--executor", "local", "--no-plot"),
    ]
    for command in commands:
        result = run_cli(*command)
        assert (result.code, result.err) == (2, line), command
        assert _sha256(store) == before, command
    with pytest.raises(schema.SchemaMismatch) as refused:
        Store(store)
    assert str(refused.value) == NEWER.format(store=store)
    assert _sha256(store) == before
    assert not (folder / "gather.lock").exists() and not (folder / "submit.lock").exists()


def test_older_schema_has_no_migration_and_is_refused_the_same_way(finished, tmp_path):
    _, folder = _copy(finished, tmp_path)
    store = _restamp(folder, 0, "0.0.1")
    before = _sha256(store)
    for command in (("show", str(folder)), ("status", str(folder)), ("gather", str(folder))):
        result = run_cli(*command)
        assert (result.code, result.err) == (2, f"error: {OLDER.format(store=store)}\n"), command
    assert _sha256(store) == before


def test_unversioned_store_is_refused(finished, tmp_path):
    _, folder = _copy(finished, tmp_path)
    store = _restamp(folder, None, "0.0.1")
    before = _sha256(store)
    for command in (("show", str(store)), ("gather", str(folder))):
        result = run_cli(*command)
        assert (result.code, result.err) == (2, f"error: {UNVERSIONED.format(store=store)}\n"), command
    assert _sha256(store) == before


def test_gather_keeps_the_stores_schema_and_creation_stamp(finished, tmp_path):
    _, folder = _copy(finished, tmp_path)
    store = CampaignDir(folder).store_path
    with h5py.File(store, "r") as handle:
        created = handle.attrs["created_utc"]
    assert run_cli("gather", str(folder), "--rebuild").code == 0
    with h5py.File(store, "r") as handle:
        assert int(handle.attrs["schema_version"]) == schema.SCHEMA_VERSION
        assert handle.attrs["created_utc"] != created  # a rebuild is a new store
        created = handle.attrs["created_utc"]
    with h5py.File(store, "a") as handle:  # forget one task's run, so the next gather copies the store
        first = sorted(handle["tasks"])[0]
        handle["tasks"][first].attrs["run_uid"] = "stale"
    os.utime(CampaignDir(folder).shard_path(first))  # a newer ctime, as a rerun's publish gives: compared again
    result = run_cli("gather", str(folder))
    assert result.code == 0 and result.out.startswith("gathered 0 new and 1 rerun task(s), 4 already in")
    with h5py.File(store, "r") as handle:
        assert int(handle.attrs["schema_version"]) == schema.SCHEMA_VERSION
        assert handle.attrs["created_utc"] == created
        assert handle.attrs["toolkit_version"] == __version__
