"""`toolkit model prepare NAME` for every packaged tiny random model, into a fresh cache.

Each of the seven `tiny-random-<arch>` folders is built by the command itself (into a temporary
`TOOLKIT_CACHE` that holds only a link to the converted SmolLM2, whose tokenizer they use), its
path is the command's last output line, and the folder loads with plain
`AutoModelForCausalLM.from_pretrained` as the architecture it names, with the trap its config is
meant to switch on.  An unknown name is exit 2 with a did-you-mean.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_cli

from toolkit.models import tiny_random
from toolkit.models.loading import prepare_packaged

# What each config must say for its trap to be exercised (docs/models.md).
TRAPS = {
    "llama": {},
    "qwen2": {"use_sliding_window": False},
    "qwen3": {"head_dim": 16},
    "mistral": {"sliding_window": 4},
    "gemma2": {"final_logit_softcapping": 0.5, "attn_logit_softcapping": 0.5, "sliding_window": 4},
    "phi3": {},
    "olmo2": {},
}
MODULES = {  # a module name only this architecture's layer has
    "qwen3": "model.layers.0.self_attn.q_norm",
    "gemma2": "model.layers.0.pre_feedforward_layernorm",
    "phi3": "model.layers.0.self_attn.qkv_proj",
    "olmo2": "model.layers.0.post_feedforward_layernorm",
}


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOOLKIT_CACHE with no tiny model in it, linking the already converted SmolLM2 folder."""
    cache = tmp_path_factory.mktemp("cache")
    packaged = prepare_packaged()
    (cache / "models").mkdir()
    (cache / "models" / packaged.name).symlink_to(packaged)
    return cache


@pytest.mark.parametrize("arch", list(tiny_random.ARCHITECTURES))
def test_prepare_writes_a_loadable_folder(arch: str, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.cli import cli

    monkeypatch.setenv("TOOLKIT_CACHE", str(fresh_cache))
    name = f"tiny-random-{arch}"
    result = CliRunner().invoke(cli, ["model", "prepare", name])
    assert result.exit_code == 0, result.output
    folder = Path(result.output.splitlines()[-1])
    assert folder.parent == fresh_cache / "models" and folder.name.startswith(f"{name}-")
    assert len(folder.name) == len(name) + 1 + 12  # <name>-<12 hex digits of the defining hash>
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 64)
    assert {k: config[k] for k in TRAPS[arch]} == TRAPS[arch]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert config["vocab_size"] == len(tokenizer) == 49152
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == arch and type(model).__name__.lower().startswith(arch)
    if arch in MODULES:
        assert MODULES[arch] in dict(model.named_modules())
    if arch == "olmo2":
        assert "model.layers.0.input_layernorm" not in dict(model.named_modules())
    if arch != "llama":
        return
    # preparing again finds the folder and leaves it as it is
    mtime = os.stat(folder / "model.safetensors").st_mtime_ns
    again = CliRunner().invoke(cli, ["model", "prepare", name])
    assert again.output.splitlines()[-1] == str(folder)
    assert os.stat(folder / "model.safetensors").st_mtime_ns == mtime
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_prepare_without_a_name_is_the_packaged_model():
    from toolkit.cli import cli

    result = CliRunner().invoke(cli, ["model", "prepare"])
    assert result.exit_code == 0 and result.output.splitlines()[-1] == str(prepare_packaged())


def test_an_unknown_name_is_exit_2_with_a_suggestion():
    result = run_cli("model", "prepare", "tiny-random-gemma")
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (
        "error: did you mean 'tiny-random-gemma2'? 'tiny-random-gemma' is not a packaged model; choose one of "
        "smollm2-135m, tiny-random-llama, tiny-random-qwen2, tiny-random-qwen3, tiny-random-mistral, "
        "tiny-random-gemma2, tiny-random-phi3, tiny-random-olmo2"
    )
