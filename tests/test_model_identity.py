"""A model folder is identified by the sha256 of its weight files (toolkit/models/identity.py).

A copy of the tiny random Llama saved as a folder: its weights' sha256 (computed here with hashlib)
is part of the plan's model identity and of the stored run; planning the unchanged folder again
reads the digest from the cache file (proved by planting a value there that no hashing could give)
and keeps the task ids; replacing the weight file under the same path gives new task ids, which a
resubmission of the same campaign then has to run (`toolkit plan` lists them as not done).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import ONE_THREAD, run_cli

from toolkit.manifest import load_manifest
from toolkit.plan import build_plan, model_identity

MANIFEST = """\
campaign: ident
output: {output}
model: {{source: {source}}}
prompts: ["The capital of France is"]
experiments:
  - name: exp4.generate
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A toolkit cache of its own (the digests file starts empty) that shares the prepared models."""
    from toolkit.models.loading import cache_dir

    root = tmp_path / "cache"
    root.mkdir()
    (root / "models").symlink_to(cache_dir() / "models")
    monkeypatch.setenv("TOOLKIT_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama saved as a user's model folder (config, tokenizer, model.safetensors)."""
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, tokenizer, _ = load(ModelSpec("tiny-random-llama", device="cpu"), Numerics())
    target = tmp_path_factory.mktemp("saved") / "my-model"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture
def folder(tmp_path: Path, saved: Path) -> Path:
    """A fresh copy of the saved folder for one test to change."""
    return Path(shutil.copytree(saved, tmp_path / "my-model"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights_sha(file_sha: str) -> str:
    """The documented combination: sha256 of the canonical JSON {file name: file sha256}."""
    return hashlib.sha256(json.dumps({"model.safetensors": file_sha}, separators=(",", ":")).encode()).hexdigest()


def _plan_ids(manifest: Path) -> set[str]:
    return set(build_plan(load_manifest(manifest)).tasks)


def test_weights_sha256_is_cached_and_a_replaced_checkpoint_makes_new_task_ids(
    tmp_path: Path, cache: Path, folder: Path
):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "campaigns", source=folder))
    weights = folder / "model.safetensors"
    first_sha = _sha(weights)

    ids = _plan_ids(manifest)
    assert len(ids) == 1
    identity = model_identity(load_manifest(manifest))
    assert identity["weights_sha256"] == _weights_sha(first_sha)
    entries = json.loads((cache / "weights_sha256.json").read_text())
    stat = weights.stat()
    assert entries == {str(weights.resolve()): {"stamp": [stat.st_size, stat.st_mtime_ns], "sha256": first_sha}}

    # unchanged folder: same ids; the digest comes from the cache file, not from reading the weights
    assert _plan_ids(manifest) == ids
    planted = "0" * 64
    entries[str(weights.resolve())]["sha256"] = planted
    (cache / "weights_sha256.json").write_text(json.dumps(entries))
    assert model_identity(load_manifest(manifest))["weights_sha256"] == _weights_sha(planted)
    (cache / "weights_sha256.json").write_text(json.dumps({}))  # forget the planted value

    # the same path, other weights: a new task id, and the cache records the new file version
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    new_ids = _plan_ids(manifest)
    assert len(new_ids) == 1 and new_ids.isdisjoint(ids)
    assert model_identity(load_manifest(manifest))["weights_sha256"] == _weights_sha(_sha(weights))


def run_campaign(manifest: Path) -> Path:
    """Plan `manifest`, run every task with the real worker in this process, gather: the campaign
    folder (what `toolkit submit` does, without a job process per stage)."""
    from toolkit import campaign
    from toolkit.store.gather import gather
    from toolkit.worker import run_tasks

    plan = build_plan(load_manifest(manifest))
    folder = campaign.campaign_dir_for(plan, None)
    campaign.prepare(plan, folder)
    run_tasks(str(folder), sorted(plan.tasks))
    gather(folder, plan.manifest.text)
    return folder


def test_resubmit_after_replacing_the_weights_runs_the_new_task(
    tmp_path: Path, cache: Path, folder: Path, one_torch_thread: None
):
    from toolkit.campaign import done_task_ids
    from toolkit.store.reader import Store

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST.format(output=tmp_path / "campaigns", source=folder))
    campaign = run_campaign(manifest)
    with Store(campaign / "store.h5") as store:
        [run] = store.runs("exp4.generate")
        assert run.attrs["model"]["weights_sha256"] == _weights_sha(_sha(folder / "model.safetensors"))
        old_id = run.task_id
    assert done_task_ids(campaign) == {old_id}

    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 0.5
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    # the resubmission's plan: one task, not done, so `submit` runs it instead of skipping it
    env = {**ONE_THREAD, "TOOLKIT_CACHE": str(cache)}
    planned = run_cli("plan", str(manifest), "--executor", "local", env=env, timeout=120)
    assert planned.code == 0, planned.err
    [line] = [row for row in planned.out.splitlines() if "exp4.generate cpu r0" in row]
    assert old_id not in line and "(done)" not in line, planned.out


def test_a_cached_hub_id_is_identified_by_the_weights_of_its_revision(
    tmp_path: Path, cache: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two revisions of one hub id in the offline cache (the layout huggingface_hub writes:
    snapshots/<commit>/, refs/<branch>): each revision's task ids follow its own weights."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--toolkit-test--tiny"
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for branch, commit in commits.items():
        shutil.copytree(saved, repo / "snapshots" / commit)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
    from safetensors.torch import load_file, save_file

    v2 = repo / "snapshots" / commits["v2"] / "model.safetensors"
    tensors = load_file(v2)
    name = sorted(tensors)[0]
    tensors[name] = -tensors[name]
    save_file(tensors, v2, metadata={"format": "pt"})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))

    ids, shas = {}, {}
    for revision in ("main", "v2", commits["v2"]):
        manifest = tmp_path / f"{revision}.yaml"
        text = MANIFEST.format(output=tmp_path / "campaigns", source="toolkit-test/tiny")
        manifest.write_text(text.replace("tiny}", f"tiny, revision: '{revision}'}}"))
        loaded = load_manifest(manifest)
        assert loaded.model.revision == revision
        ids[revision] = set(build_plan(loaded).tasks)
        shas[revision] = model_identity(loaded)["weights_sha256"]
    file = repo / "snapshots" / commits["main"] / "model.safetensors"
    main_sha, v2_sha = _weights_sha(_sha(file)), _weights_sha(_sha(v2))
    assert shas == {"main": main_sha, "v2": v2_sha, commits["v2"]: v2_sha} and main_sha != v2_sha
    assert ids["main"].isdisjoint(ids["v2"])
