"""`model.chat_template: true` wraps each prompt in the tokenizer's chat template (toolkit/context.py).

exp4.generate run by the real worker stores, for a templated prompt, exactly the ids transformers'
own `apply_chat_template` gives for one user message with the generation prompt (no doubled BOS);
the setting is recorded in the run's model attrs and makes other task ids than the plain prompt.
A tokenizer without a template is refused by the preflight in one line, before anything is made.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from conftest import run_cli
from test_model_identity import run_campaign

from toolkit.manifest import load_manifest
from toolkit.plan import build_plan

PROMPT = "The capital of France is"
MANIFEST = """\
campaign: chat
output: {output}
model: {{source: {source}, chat_template: {chat}}}
prompts: ["{prompt}"]
experiments:
  - name: exp4.generate
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
"""


def _manifest(tmp_path: Path, chat: str, source: str = "tiny-random-llama", name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(MANIFEST.format(output=tmp_path / "campaigns", source=source, chat=chat, prompt=PROMPT))
    return path


def test_templated_prompt_ids_are_stored_and_recorded(tmp_path: Path, one_torch_thread: None):
    from transformers import AutoTokenizer

    from toolkit.models.loading import prepare_packaged
    from toolkit.store.reader import Store

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_packaged()))  # tiny-random-llama's tokenizer
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    expected = list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)
    plain = tokenizer(PROMPT).input_ids
    assert expected[-len(plain) - 6 : -6] == plain  # inside the template, before its 6 closing ids
    assert expected.count(tokenizer.bos_token_id) == 3  # system, user, assistant turns: none doubled

    on = _manifest(tmp_path, "true")
    off = _manifest(tmp_path, "false", name="off.yaml")
    on_ids, off_ids = set(build_plan(load_manifest(on)).tasks), set(build_plan(load_manifest(off)).tasks)
    assert len(on_ids) == len(off_ids) == 1 and on_ids.isdisjoint(off_ids)

    with Store(run_campaign(on) / "store.h5") as store:
        [run] = store.runs("exp4.generate")
        assert run.task_id in on_ids
        assert run.attrs["model"]["chat_template"] is True
        assert np.asarray(run["prompts/000/prompt_ids"]).tolist() == expected


def test_a_tokenizer_without_a_template_is_refused_by_the_preflight(tmp_path: Path):
    from toolkit.models.loading import prepare_packaged

    folder = tmp_path / "no-template"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(prepare_packaged() / name, folder / name)
    manifest = _manifest(tmp_path, "true", source=str(folder))
    result = run_cli("validate", str(manifest), cwd=tmp_path, timeout=120)
    assert result.code == 2, result.err
    column = manifest.read_text().splitlines()[2].index("chat_template: true") + len("chat_template: ") + 1
    assert result.err.strip() == (
        f"error: {manifest}:3:{column}: model.chat_template: is true but the tokenizer in {folder} has no chat "
        "template; set it to false (or add the template to the tokenizer's files)"
    )
    assert not (tmp_path / "campaigns").exists()
