"""The preflight (`toolkit.launch.preflight`): checks of the environment run once by `validate`,
`plan` and `submit`, before anything is created — the model source (empty folder, folder without
a saved model, uncached hub id, mistyped relative folder) and the container runtime and image
(out of the pure manifest layer, inspected once per submit)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conftest import run_cli

from toolkit.manifest import load_manifest

MANIFEST = """\
campaign: pre
output: {output}
model: {{source: {source}}}
prompts: ["a"]
targets: [a100]
experiments:
  - name: exp4.generate
    id: generate
{extra}"""


def _manifest(folder: Path, source: str, extra: str = "") -> tuple[Path, str]:
    """Write the manifest; (path, `file:line:col` of model.source)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.yaml"
    text = MANIFEST.format(output=folder / "campaigns", source=source, extra=extra)
    path.write_text(text)
    line = text.splitlines()[2]
    return path, f"{path}:3:{line.index(source) + 1}"


def _refused(args: list[str], expected: str, folder: Path, env: dict[str, str] | None = None) -> None:
    for command in ("validate", "plan", "submit"):
        result = run_cli(
            command, *args, *(["--executor", "local"] if command == "submit" else []), env=env, timeout=120
        )
        assert (result.code, result.out, result.err) == (2, "", f"error: {expected}\n"), command
        assert not (folder / "campaigns").exists(), command


def test_an_empty_model_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    manifest, where = _manifest(tmp_path, "./empty")
    _refused(
        [str(manifest)],
        f"{where}: model.source: model folder {tmp_path / 'empty'} is empty; put a saved "
        "model there (config.json and weights, as save_pretrained writes them) or name a packaged model or "
        "a cached hub id",
        tmp_path,
    )
    (tmp_path / "empty" / "weights.bin").write_bytes(b"x")
    _refused(
        [str(manifest)],
        f"{where}: model.source: model folder {tmp_path / 'empty'} has no config.json; put "
        "a saved model there (config.json and weights, as save_pretrained writes them) or name a packaged "
        "model or a cached hub id",
        tmp_path,
    )


def test_an_uncached_hub_id_and_a_mistyped_relative_folder_are_refused(tmp_path):
    hub = tmp_path / "hub"
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    manifest, where = _manifest(tmp_path, "someorg/somemodel")
    _refused(
        [str(manifest)],
        f"{where}: model.source: 'someorg/somemodel' is no model folder (looked for "
        f"{tmp_path / 'someorg' / 'somemodel'}) and no hub id in the offline cache (looked in "
        f"{hub / 'models--someorg--somemodel'}); fix the folder's path (relative to the manifest's folder), "
        "or put the model in the cache on a machine with network (huggingface-cli download "
        "someorg/somemodel) and copy it here",
        tmp_path,
        env,
    )
    # a relative folder with a typo (models/mymodel, the folder is models/my-model) was taken for a hub id
    (tmp_path / "models" / "my-model").mkdir(parents=True)
    manifest, where = _manifest(tmp_path, "models/mymodel")
    _refused(
        [str(manifest)],
        f"{where}: model.source: 'models/mymodel' is no model folder (looked for "
        f"{tmp_path / 'models' / 'mymodel'}) and no hub id in the offline cache (looked in "
        f"{hub / 'models--models--mymodel'}); fix the folder's path (relative to the manifest's folder), "
        "or put the model in the cache on a machine with network (huggingface-cli download "
        "models/mymodel) and copy it here",
        tmp_path,
        env,
    )
    # ./models/mymodel cannot be a hub id: the manifest layer refuses it already
    manifest, where = _manifest(tmp_path, "./models/mymodel")
    result = run_cli("validate", str(manifest), env=env, timeout=120)
    assert result.code == 2 and result.err.startswith(
        f"error: {where}: model.source: './models/mymodel' is not a packaged model"
    ), result.err


def test_a_cached_hub_id_and_a_saved_model_folder_pass(tmp_path):
    hub = tmp_path / "hub"
    snapshot = hub / "models--someorg--somemodel" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub / "models--someorg--somemodel" / "refs").mkdir()
    (hub / "models--someorg--somemodel" / "refs" / "main").write_text("a" * 40)
    manifest, _ = _manifest(tmp_path / "hubcase", "someorg/somemodel")
    result = run_cli("validate", str(manifest), env={"HF_HUB_CACHE": str(hub)}, timeout=120)
    assert (result.code, result.out) == (0, f"{manifest}: valid — campaign pre, 1 task(s) in 1 stage(s)\n"), result.err
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_text("{}")
    manifest, _ = _manifest(tmp_path, "./saved")
    result = run_cli("validate", str(manifest), timeout=120)
    assert result.code == 0, result.err


def _fake_podman(folder: Path) -> Path:
    """A `podman` that logs its arguments, knows every image (one fixed id) and runs nothing."""
    folder.mkdir()
    log = folder / "calls.log"
    script = folder / "podman"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        'if [ "$1 $2" = "image inspect" ]; then echo sha256:' + "ab" * 32 + "; exit 0; fi\n"
        "exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def test_container_checks_moved_out_of_validation_and_run_once(tmp_path):
    container = "container: {runtime: apptainer, image: nowhere.sif}\n"
    manifest, _ = _manifest(tmp_path, "tiny-random-llama", container)
    assert load_manifest(manifest).container.runtime == "apptainer"  # the manifest layer reads values only
    row = MANIFEST.count("\n") + 1
    _refused(
        [str(manifest)],
        f"{manifest}:{row}:22: container.runtime: container runtime 'apptainer' is not "
        "installed (not on PATH): module load apptainer, or install it (https://apptainer.org)",
        tmp_path,
        {"PATH": "/usr/bin:/bin"},
    )
    # podman found, image inspected once per command, submit included (it was checked twice there)
    log = _fake_podman(tmp_path / "bin")
    manifest, _ = _manifest(
        tmp_path / "podman", "tiny-random-llama", "container: {runtime: podman, image: localhost/x:1}\n"
    )
    env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for command in ("validate", "plan", "submit"):
        log.write_text("")
        result = run_cli(
            command, str(manifest), *(["--executor", "local"] if command == "submit" else []), env=env, timeout=300
        )
        inspects = [line for line in log.read_text().splitlines() if line.startswith("image inspect")]
        assert inspects == ["image inspect --format {{.Id}} localhost/x:1"], (command, result.err)
    assert result.code == 1  # the fake runtime runs nothing: the task failed, after the preflight passed


def test_an_output_that_cannot_hold_the_campaign_folder_is_refused(tmp_path):
    """A file where a folder must go, and a read-only filesystem (a real read-only tmpfs; as root,
    permission bits do not stop writes, a read-only mount does): exit 2, one located line each."""
    import subprocess

    import pytest

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(output=blocker / "campaigns", source="tiny-random-llama", extra=""))
    expected = (
        f"{path}:2:9: output: cannot create the campaign folder {blocker}/campaigns/pre: {blocker} is not "
        "a folder; choose another output (or --root)"
    )
    _refused([str(path)], expected, tmp_path)
    assert blocker.read_text() == "not a folder\n"

    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(readonly)], check=True)
    try:
        path.write_text(MANIFEST.format(output=readonly / "campaigns", source="tiny-random-llama", extra=""))
        result = run_cli("submit", str(path), "--executor", "local", timeout=120)
        assert (result.code, result.err) == (
            2,
            f"error: {path}:2:9: output: cannot create the campaign folder "
            f"{readonly}/campaigns/pre: {readonly} is not writable; choose "
            "another output (or --root)\n",
        )
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
