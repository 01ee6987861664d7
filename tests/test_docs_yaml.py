"""Every ```yaml block of README.md and docs/*.md is valid for what it shows.

A block is a whole manifest (it has `experiments:`), validated by `toolkit validate`; a site
profile (`targets:` is a mapping), read by the site loader; or a `container:` fragment, checked by
the manifest validator inside a minimal manifest.  A block of any other kind fails the test until
it is classified here.  README's "Every key, with its default" block is also compared with the
defaults the validator really applies.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from toolkit.manifest import load_manifest
from toolkit.manifest.site import load_site

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MINIMAL = (
    "campaign: minimal\nmodel: {source: tiny-random-llama}\nprompts: [hello]\nexperiments: [{name: exp4.generate}]\n"
)


def _blocks() -> list:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            out.append(pytest.param(doc, line, match.group(1), id=f"{doc.relative_to(REPO)}:{line}"))
    return out


BLOCKS = _blocks()


def _kind(data: object) -> str:
    if isinstance(data, dict) and "experiments" in data:
        return "manifest"
    if isinstance(data, dict) and isinstance(data.get("targets"), dict):  # a manifest's targets is a list
        return "site profile"
    if isinstance(data, dict) and set(data) == {"container"}:
        return "container fragment"
    return "unknown"


def test_the_docs_have_yaml_blocks():
    kinds = {_kind(yaml.safe_load(p.values[2])) for p in BLOCKS}
    assert {"manifest", "site profile", "container fragment"} <= kinds, kinds


@pytest.mark.parametrize(("doc", "line", "text"), BLOCKS)
def test_yaml_block_is_valid(tmp_path: Path, monkeypatch, doc: Path, line: int, text: str):
    data = yaml.safe_load(text)
    kind = _kind(data)
    assert kind != "unknown", f"{doc}:{line}: classify this yaml block in tests/test_docs_yaml.py"
    if kind == "manifest":
        path = tmp_path / "manifest.yaml"
        path.write_text(text)
        env = _stand_in_hub_cache(data["model"], tmp_path / "hub")
        result = run_cli("validate", str(path), cwd=tmp_path, env=env, timeout=120)
        assert result.code == 0, f"{doc}:{line}:\n{result.err}"
        assert "valid" in result.out
    elif kind == "site profile":
        path = tmp_path / "site.yaml"
        path.write_text(text)
        profile, problems = load_site(path)
        assert profile is not None and not problems, f"{doc}:{line}: {problems}"
    else:
        # The fragment's values, checked by the manifest validator (not whether this machine has the
        # runtime and the image: that is the submit-time preflight's job, not the documentation's).
        from toolkit.manifest import checker

        monkeypatch.setattr(checker.Checker, "_container_available", lambda *args: None, raising=False)
        path = tmp_path / "manifest.yaml"
        path.write_text(MINIMAL + text)
        container = load_manifest(path).container
        expected = data["container"]
        assert container.runtime == expected["runtime"]
        for key in ("image", "network", "gpu"):
            if key in expected:
                assert getattr(container, key) == expected[key], key
        assert list(container.extra_args) == expected.get("extra_args", [])


def _stand_in_hub_cache(model: dict, root: Path) -> dict[str, str]:
    """A doc's manifest may name a hub id no test machine holds (docs/own_model.md's 8B model): an
    offline-cache entry for it at its revision, holding the packaged SmolLM2's config and tokenizer
    (a llama with a chat template; no weights), so `validate` checks the manifest rather than this
    machine's downloads."""
    from toolkit.manifest.checker import HUB_ID_RE
    from toolkit.models.loading import prepare_packaged
    from toolkit.models.packaged import PACKAGED

    source, revision = str(model.get("source", "")), str(model.get("revision") or "main")
    if source in PACKAGED or not HUB_ID_RE.match(source):
        return {}
    repo = root / f"models--{source.replace('/', '--')}"
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    for file in prepare_packaged().iterdir():  # config, tokenizer and its chat template; not the weights
        if file.suffix != ".safetensors":
            (repo / "snapshots" / commit / file.name).write_bytes(file.read_bytes())
    if commit != revision:
        (repo / "refs").mkdir()
        (repo / "refs" / revision).write_text(commit)
    return {"HF_HUB_CACHE": str(root)}


def _defaults_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    head = text.index("Every key, with its default:")
    return BLOCK.search(text, head).group(1)


def test_readme_defaults_block_shows_the_real_defaults(tmp_path: Path):
    """The values README's "Every key, with its default" block gives a key with a default are
    the values a manifest that omits the key gets."""
    block = yaml.safe_load(_defaults_block())
    path = tmp_path / "manifest.yaml"
    path.write_text(MINIMAL)
    defaults = load_manifest(path)
    assert block["output"] == str(defaults.output)
    assert block["site"] == defaults.site.name
    model = block["model"]
    assert model["revision"] == defaults.model.revision and model["device"] == defaults.model.device
    for key, value in defaults.numerics.to_dict().items():
        assert model[key] == value, f"model.{key}"
    for key in ("time_min", "cpus", "mem_gb", "gpus", "array_parallelism"):
        assert block["resources"][key] == getattr(defaults.resources, key), f"resources.{key}"
    assert block["container"] == {"runtime": defaults.container.runtime}
    # targets shows an example; its comment states the default
    comment = re.search(r"^targets:.*default \[(\w+)\]", _defaults_block(), re.M)
    assert comment and (comment.group(1),) == defaults.targets
    # every key the validator knows is shown
    from toolkit.manifest.checker import MODEL_KEYS, RESOURCE_KEYS, TOP_KEYS
    from toolkit.manifest.experiments import EXPERIMENT_KEYS

    assert set(block) == set(TOP_KEYS)
    assert set(model) == set(MODEL_KEYS)
    assert set(block["resources"]) == set(RESOURCE_KEYS)
    assert set().union(*(set(e) for e in block["experiments"])) == set(EXPERIMENT_KEYS)


def test_readme_defaults_block_with_array_parallelism_null_is_valid(tmp_path: Path):
    """`array_parallelism: null` (no throttle) is accepted, as the README shows it."""
    path = tmp_path / "manifest.yaml"
    path.write_text(MINIMAL + "resources: {array_parallelism: null}\n")
    assert load_manifest(path).resources.array_parallelism is None


def test_docs_do_not_link_outside_the_repository():
    """No doc points into ../shared/ (a folder of the project's workspace, not of this repository)."""
    for doc in DOCS:
        assert "shared/" not in doc.read_text(encoding="utf-8"), doc


def test_docs_state_the_real_jvp_mode_defaults():
    """docs/science_ii_exp6.md's params table gives exp6.equal_logits' jvp_mode default."""
    from toolkit.experiments.exp6.equal_logits import Params

    text = (REPO / "docs" / "science_ii_exp6.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("|") and "`jvp_mode`" in line)
    assert row.split("|")[2].strip().endswith(Params.jvp_mode), row
