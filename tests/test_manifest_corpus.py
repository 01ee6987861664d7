"""A corpus of malformed manifests: every one is refused cleanly, before anything is created.

For each case: exit 2; every stderr line starts with `error: `, and, where the manifest could be
read, with `error: <manifest>:<line>:<col>: `; the words that say why are in the output; no
traceback and no "internal error" (the validator's last-resort line for a check that broke);
nothing written under the working directory or the output folder.  The cases go through the real
entry point, `toolkit.cli.main`, in this process (fast: hundreds of cases), with `validate` and
`plan` for every case and `submit --executor local` for many; a few also run in a subprocess.  A
last test throws extreme values at every param of every experiment and checks that validation
either accepts or refuses them, never breaks.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
from conftest import run_cli

from toolkit import experiments
from toolkit.cli import main
from toolkit.errors import ManifestError, ToolkitError

PROMPTS = 'prompts: ["The capital of France is"]'
GOOD = f"""\
campaign: demo
model: {{source: tiny-random-llama}}
targets: [a100]
{PROMPTS}
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 4, top_k: 5}}
"""
# two generate runs and their comparison
PAIR = (
    GOOD.replace(
        "    params: {max_new_tokens: 4, top_k: 5}\n", "    params: {max_new_tokens: 4, top_k: 5}\n    repeats: 2\n"
    )
    + """\
  - name: exp4.compare
    id: compare
    needs: [generate]
"""
)


@dataclass
class Case:
    """One malformed manifest: its text, the words the output must hold, files to create first
    (name -> bytes, or None for a folder), and how many error lines (None: any number >= 1)."""

    case_id: str
    text: str | bytes
    words: tuple[str, ...] = ()
    lines: int | None = None
    files: dict[str, bytes | None] = field(default_factory=dict)
    located: bool = True


def c(
    case_id: str,
    text: str | bytes,
    *words: str,
    lines: int | None = None,
    files: dict[str, bytes | None] | None = None,
    located: bool = True,
):
    return pytest.param(Case(case_id, text, words, lines, files or {}, located), id=case_id)


def _replace(old: str, new: str, base: str = GOOD) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def _entry(text: str) -> str:
    """GOOD's generate entry with `text` (indented entry keys) appended."""
    return GOOD + "".join(f"    {line}\n" for line in text.splitlines())


def _bomb() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\ncampaign: *i\n"


SDPA = _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, attn_implementation: sdpa}")
LIPSCHITZ = GOOD.split("experiments:")[0] + "experiments:\n  - name: exp2.lipschitz\n    id: lip\n"

CASES = [
    # -- not a mapping at the top ----------------------------------------------------------------
    c("top-list", "- campaign: demo\n- experiments: []\n", "must be a mapping", "got a list", lines=1),
    c("top-int", "42\n", "must be a mapping", "got 42", lines=1),
    c("top-string", "hello world\n", "must be a mapping", lines=1),
    c("top-empty-file", "", "must be a mapping", "got nothing", lines=1),
    c("top-only-comments", "# nothing\n# at all\n", "must be a mapping", lines=1),
    c("top-null", "null\n", "must be a mapping", "got nothing", lines=1),
    c("top-tilde", "~\n", "must be a mapping", lines=1),
    c("top-empty-flow-list", "[]\n", "must be a mapping", "empty list", lines=1),
    c("top-empty-mapping", "{}\n", "missing required key 'campaign'", "'model'", "'experiments'", lines=3),
    c("top-two-documents", "---\ncampaign: a\n---\ncampaign: b\n", "YAML syntax", "single document", lines=1),
    # -- YAML syntax and encoding ----------------------------------------------------------------
    c("yaml-unclosed-bracket", "campaign: [demo\nmodel: x\n", "YAML syntax", lines=1),
    c("yaml-unclosed-quote", 'campaign: "demo\nmodel: x\n', "YAML syntax", lines=1),
    c("yaml-tab-indent", "campaign: demo\n\tmodel: x\n", "YAML syntax", lines=1),
    c("yaml-bad-indent", "campaign: demo\n  model: x\n", "YAML syntax", lines=1),
    c("yaml-dup-top-key", GOOD + "campaign: again\n", "duplicate key 'campaign'", lines=1),
    c(
        "yaml-dup-nested-key",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, source: x}"),
        "duplicate key 'source'",
        lines=1,
    ),
    c("yaml-dup-param-key", _replace("top_k: 5}", "top_k: 5, top_k: 6}"), "duplicate key 'top_k'", lines=1),
    c("yaml-nul-byte", GOOD.replace("demo", "de\0mo"), "not allowed", lines=1),
    c("yaml-control-char", GOOD.replace("demo", "de\x07mo"), "not allowed", lines=1),
    c("not-utf8-latin1", GOOD.replace("demo", "d\xe9mo").encode("latin-1"), "not UTF-8", lines=1),
    c("not-utf8-utf16", GOOD.encode("utf-16"), "not UTF-8", lines=1),
    c("yaml-alias-bomb", _bomb(), "alias bomb", lines=1),
    c("yaml-recursive-alias", "a: &a [*a]\n" + GOOD, "nests more than", lines=1),
    c("yaml-deep-nesting", "campaign: " + "[" * 600 + "]" * 600 + "\n", "nests more than", lines=1),
    c("yaml-nesting-over-64", "campaign: " + "[" * 70 + "]" * 70 + "\n", "nests more than 64 levels", lines=1),
    c("yaml-deep-block-nesting", "".join(" " * i + f"k{i}:\n" for i in range(300)), lines=1),
    c("yaml-huge-file", GOOD + "# " + "x" * (4 * 1024 * 1024) + "\n", "larger than", lines=1),
    c(
        "yaml-python-object",
        _replace("campaign: demo", 'campaign: !!python/object/apply:os.system ["touch pwned"]'),
        "unsupported YAML tag",
        lines=1,
    ),
    c("yaml-python-name", GOOD + "output: !!python/name:os.system\n", "constructor", lines=1),
    c("yaml-int-tag-not-int", _replace("top_k: 5", "top_k: !!int five"), "does not fit its tag", lines=1),
    c("yaml-bool-tag-not-bool", GOOD + "container: {network: !!bool maybe}\n", "does not fit its tag", lines=1),
    c("yaml-timestamp-tag", _replace("campaign: demo", "campaign: !!timestamp nope"), "does not fit its tag", lines=1),
    c("yaml-float-tag", _replace("top_k: 5", "top_k: !!float abc"), "does not fit its tag", lines=1),
    c(
        "yaml-binary-campaign",
        _replace("campaign: demo", "campaign: !!binary aGVsbG8="),
        "campaign: must match",
        lines=1,
    ),
    c("yaml-set-tag", GOOD + "resources: !!set {cpus: 2}\n", "unsupported YAML tag", lines=1),
    c("yaml-custom-tag-seq", _replace("targets: [a100]", "targets: !gpus [a100]"), "unsupported YAML tag", lines=1),
    c("yaml-custom-tag-scalar", _replace("campaign: demo", "campaign: !name demo"), "constructor", lines=1),
    c(
        "yaml-merge-key",
        "base: &b {top_k: 5}\n" + _replace("{max_new_tokens: 4, top_k: 5}", "{<<: *b}"),
        "merge keys",
        lines=None,
    ),
    c("yaml-complex-key", GOOD + "? [a, b]\n: c\n", "plain scalars", lines=1),
    # -- unknown keys, at every level ----------------------------------------------------------
    c("unknown-top-key", GOOD + "prompt: [x]\n", "prompt: unknown key", "did you mean 'prompts'?", lines=1),
    c(
        "unknown-model-key",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, dtyp: float32}"),
        "model.dtyp: unknown key",
        "did you mean 'dtype'?",
        lines=1,
    ),
    c("unknown-entry-key", _entry("param: {top_k: 3}"), "experiments[0].param: unknown key", "'params'", lines=1),
    c("unknown-param", _replace("top_k: 5", "topk: 5"), "unknown parameter", "did you mean 'top_k'?", lines=1),
    c("unknown-resources-key", GOOD + "resources: {memory: 16}\n", "resources.memory: unknown key", lines=1),
    c(
        "unknown-entry-resources-key",
        _entry("resources: {cpu: 2}"),
        "experiments[0].resources.cpu: unknown key",
        "did you mean 'cpus'?",
        lines=1,
    ),
    c(
        "unknown-container-key",
        GOOD + "container: {runtime: none, imag: x}\n",
        "container.imag: unknown key",
        "did you mean 'image'?",
        lines=1,
    ),
    c("unknown-numerics-key", _entry("numerics: {kv: false}"), "experiments[0].numerics.kv: unknown key", lines=1),
    c("unknown-prompts-file-key", _replace(PROMPTS, "prompts: {path: p.txt}"), "prompts.path: unknown key"),
    c(
        "unknown-sweep-key-did-you-mean",
        _entry("sweep: {top-k: [2, 3]}"),
        "unknown sweep key",
        "did you mean 'top_k'?",
        lines=1,
    ),
    c(
        "unknown-sweep-numerics-did-you-mean",
        _entry("sweep: {kv_cach: [true, false]}"),
        "unknown sweep key",
        "did you mean 'kv_cache'?",
        lines=1,
    ),
    # -- campaign, output, site ----------------------------------------------------------------
    c("campaign-int", _replace("campaign: demo", "campaign: 12"), "campaign: must match", lines=1),
    c("campaign-list", _replace("campaign: demo", "campaign: [a]"), "campaign: must match", lines=1),
    c("campaign-dotdot", _replace("campaign: demo", "campaign: ../x"), "campaign: must match", lines=1),
    c("campaign-slash", _replace("campaign: demo", "campaign: a/b"), "campaign: must match", lines=1),
    c("campaign-space", _replace("campaign: demo", "campaign: 'a b'"), "campaign: must match", lines=1),
    c("campaign-unicode", _replace("campaign: demo", "campaign: d\u00e9mo"), "campaign: must match", lines=1),
    c("campaign-too-long", _replace("campaign: demo", "campaign: " + "a" * 65), "campaign: must match", lines=1),
    c("campaign-empty-string", _replace("campaign: demo", "campaign: ''"), "campaign: must match", lines=1),
    c("campaign-hidden", _replace("campaign: demo", "campaign: .demo"), "campaign: must match", lines=1),
    c("campaign-missing", _replace("campaign: demo\n", ""), "missing required key 'campaign'", lines=1),
    c("campaign-null", _replace("campaign: demo", "campaign:"), "campaign: is empty", lines=1),
    c("output-int", GOOD + "output: 5\n", "output: must be a folder path", lines=1),
    c("output-empty", GOOD + "output: ''\n", "output: must be a folder path", lines=1),
    c("output-null", GOOD + "output: null\n", "output: must be a folder path", lines=1),
    c("output-nul", GOOD + 'output: "a\\0b"\n', "output: must be a folder path", lines=1),
    c("output-too-long", GOOD + f"output: {'a' * 300}\n", "output: must be a folder path", lines=1),
    c("output-newline", GOOD + 'output: "a\\nb"\n', "output: must be a folder path", lines=1),
    c("site-unknown", GOOD + "site: nosuch\n", "unknown site profile 'nosuch'", lines=1),
    c("site-int", GOOD + "site: 5\n", "site: must name a site profile", lines=1),
    c("site-too-long", GOOD + f"site: {'s' * 5000}\n", "unknown site profile", lines=1),
    c("site-missing-yaml", GOOD + "site: nope.yaml\n", "unknown site profile 'nope.yaml'", lines=1),
    c(
        "site-uppercase-target",
        GOOD + "site: upper.yaml\n",
        "target name 'A100' must match",
        "lower case",
        files={"upper.yaml": b"name: upper\ntargets:\n  A100: {gres: 'gpu:a100:1'}\n  a100: {gres: 'gpu:a100:1'}\n"},
    ),
    c("site-bad-yaml", GOOD + "site: broken.yaml\n", "YAML syntax", files={"broken.yaml": b"targets: [\n"}),
    # -- model ---------------------------------------------------------------------------------
    c(
        "model-string",
        _replace("model: {source: tiny-random-llama}", "model: tiny-random-llama"),
        "model: must be a mapping",
        lines=1,
    ),
    c(
        "model-list",
        _replace("model: {source: tiny-random-llama}", "model: [tiny-random-llama]"),
        "model: must be a mapping",
        lines=1,
    ),
    c("model-null", _replace("model: {source: tiny-random-llama}", "model:"), "model: is empty", lines=1),
    c("model-source-int", _replace("{source: tiny-random-llama}", "{source: 5}"), "model.source: must name", lines=1),
    c("model-source-missing", _replace("{source: tiny-random-llama}", "{dtype: float32}"), "model.source", lines=1),
    c(
        "model-source-unknown-user",
        _replace("{source: tiny-random-llama}", "{source: ~nosuchuser0/m}"),
        "model.source",
        lines=1,
    ),
    c(
        "model-source-too-long",
        _replace("{source: tiny-random-llama}", "{source: " + "m" * 5000 + "}"),
        "model.source",
        lines=1,
    ),
    c("model-source-nul", _replace("{source: tiny-random-llama}", '{source: "a\\0b"}'), "model.source", lines=1),
    c(
        "model-device-gpu",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, device: gpu}"),
        "model.device: must be auto, cpu",
        lines=1,
    ),
    c(
        "model-revision-int",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, revision: 3}"),
        "model.revision: must be a string",
        lines=1,
    ),
    c(
        "model-dtype-int",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, dtype: 32}"),
        "model.dtype: must be one of",
        lines=1,
    ),
    c(
        "model-kv-cache-string",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, kv_cache: 'yes'}"),
        "model.kv_cache: must be one of true, false, got 'yes'",
        lines=1,
    ),
    c(
        "model-tf32-int",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, tf32: 1}"),
        "model.tf32: must be one of",
        lines=1,
    ),
    # -- prompts -------------------------------------------------------------------------------
    c("prompts-string", _replace(PROMPTS, "prompts: hello"), "prompts: must be a list of strings", lines=1),
    c("prompts-int", _replace(PROMPTS, "prompts: 5"), "prompts: must be a list", lines=1),
    c(
        "prompts-ints",
        _replace(PROMPTS, "prompts: [1, 2]"),
        "prompts[0]: must be a non-empty string",
        "prompts[1]",
        lines=2,
    ),
    c("prompts-null-item", _replace(PROMPTS, "prompts: [~]"), "prompts[0]: must be a non-empty string", lines=1),
    c("prompts-empty-string", _replace(PROMPTS, "prompts: ['']"), "prompts[0]: must be a non-empty string", lines=1),
    c("prompts-blank-string", _replace(PROMPTS, "prompts: ['   ']"), "prompts[0]", lines=1),
    c("prompts-nested-list", _replace(PROMPTS, "prompts: [[a]]"), "prompts[0]", lines=1),
    c(
        "prompts-empty-list",
        _replace(PROMPTS, "prompts: []"),
        "prompts: is empty",
        "exp4.generate reads prompts",
        lines=1,
    ),
    c("prompts-null", _replace(PROMPTS, "prompts:"), "prompts: must be a list", lines=1),
    c("prompts-missing", _replace(PROMPTS + "\n", ""), "exp4.generate reads prompts", "no `prompts:`", lines=1),
    c(
        "prompts-empty-for-exp1",
        _replace(PROMPTS, "prompts: []", LIPSCHITZ.replace("exp2.lipschitz", "exp1.layer_svd")),
        "prompts: is empty",
        "exp1.layer_svd reads prompts",
        lines=1,
    ),
    c(
        "prompts-empty-for-two",
        _replace(PROMPTS, "prompts: []", GOOD + "  - name: exp2.lipschitz\n"),
        "prompts: is empty",
        "exp4.generate, exp2.lipschitz read prompts",
        lines=1,
    ),
    c(
        "prompts-file-missing",
        _replace(PROMPTS, "prompts: {file: missing.txt}"),
        "prompts.file: cannot read",
        "No such file",
        lines=1,
    ),
    c(
        "prompts-file-folder",
        _replace(PROMPTS, "prompts: {file: folder}"),
        "prompts.file",
        "not a regular file",
        lines=1,
        files={"folder": None},
    ),
    c(
        "prompts-file-binary",
        _replace(PROMPTS, "prompts: {file: image.bin}"),
        "prompts.file",
        files={"image.bin": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"},
        lines=1,
    ),
    c(
        "prompts-file-nul-bytes",
        _replace(PROMPTS, "prompts: {file: nul.txt}"),
        "prompts.file",
        "NUL",
        files={"nul.txt": b"a prompt\x00\nanother\n"},
        lines=1,
    ),
    c(
        "prompts-file-empty",
        _replace(PROMPTS, "prompts: {file: empty.txt}"),
        "prompts.file",
        "holds no prompts",
        files={"empty.txt": b""},
        lines=1,
    ),
    c(
        "prompts-file-blank-lines",
        _replace(PROMPTS, "prompts: {file: blank.txt}"),
        "holds no prompts",
        files={"blank.txt": b"\n   \n\t\n\r\n"},
        lines=1,
    ),
    c(
        "prompts-file-latin1",
        _replace(PROMPTS, "prompts: {file: l1.txt}"),
        "not UTF-8",
        files={"l1.txt": "caf\xe9\n".encode("latin-1")},
        lines=1,
    ),
    c(
        "prompts-file-too-large",
        _replace(PROMPTS, "prompts: {file: big.txt}"),
        "larger than",
        files={"big.txt": b"x\n" * (8 * 1024 * 1024 + 1)},
        lines=1,
    ),
    c("prompts-file-int", _replace(PROMPTS, "prompts: {file: 5}"), "prompts.file: must be a path", lines=1),
    c("prompts-file-null", _replace(PROMPTS, "prompts: {file: }"), "prompts.file: must be a path", lines=1),
    c("prompts-file-unknown-user", _replace(PROMPTS, "prompts: {file: ~nosuchuser0/p.txt}"), "prompts.file", lines=1),
    # -- targets -------------------------------------------------------------------------------
    c("targets-string", _replace("targets: [a100]", "targets: a100"), "targets: must be a non-empty list", lines=1),
    c("targets-empty", _replace("targets: [a100]", "targets: []"), "targets: must be a non-empty list"),
    c("targets-int-items", _replace("targets: [a100]", "targets: [1, 2]"), "targets[0]", "targets[1]"),
    c("targets-uppercase", _replace("targets: [a100]", "targets: [A100]"), "targets[0]: must be a lower-case"),
    c(
        "targets-unknown",
        _replace("targets: [a100]", "targets: [b200]"),
        "unknown target 'b200'",
        "did you mean 'h200'?",
    ),
    c("targets-duplicate", _replace("targets: [a100]", "targets: [a100, a100]"), "duplicate target 'a100'", lines=1),
    c(
        "entry-targets-not-subset",
        _replace("targets: [a100]", "targets: [a100, h100]", _entry("targets: [v100]")),
        "not in the manifest's targets",
        lines=1,
    ),
    c("entry-targets-empty", _entry("targets: []"), "experiments[0].targets: must be a non-empty list", lines=1),
    # -- experiments -----------------------------------------------------------------------------
    c(
        "experiments-mapping",
        GOOD.split("experiments:")[0] + "experiments: {name: exp4.generate}\n",
        "experiments: must be a non-empty list",
        lines=1,
    ),
    c(
        "experiments-empty",
        GOOD.split("experiments:")[0] + "experiments: []\n",
        "experiments: must be a non-empty",
        lines=1,
    ),
    c("experiments-null", GOOD.split("experiments:")[0] + "experiments:\n", "experiments: is empty", lines=1),
    c(
        "experiments-strings",
        GOOD.split("experiments:")[0] + "experiments: [exp4.generate]\n",
        "experiments[0]: must be a mapping",
        lines=1,
    ),
    c(
        "experiments-too-many",
        GOOD.split("experiments:")[0]
        + "experiments:\n"
        + "".join(f"  - {{name: exp4.generate, id: g{i}}}\n" for i in range(501)),
        "more than 500",
        lines=1,
    ),
    c(
        "entry-no-name",
        _replace("  - name: exp4.generate\n", "  - params: {}\n", GOOD).replace(
            "    params: {max_new_tokens", "    sweep: {top_k: [3, 4]}\n    ignored: {max_new_tokens"
        ),
        "missing an experiment name",
    ),
    c(
        "entry-name-int",
        _replace("name: exp4.generate", "name: 4"),
        "experiments[0].name: must be an experiment",
        lines=1,
    ),
    c(
        "entry-name-unknown",
        _replace("name: exp4.generate", "name: exp4.generat"),
        "unknown experiment",
        "did you mean 'exp4.generate'?",
        lines=1,
    ),
    c("entry-name-uppercase", _replace("name: exp4.generate", "name: EXP4.generate"), "unknown experiment", lines=1),
    c("entry-id-dotdot", _replace("id: generate", "id: ../x"), "experiments[0].id: must match", lines=1),
    c("entry-id-space", _replace("id: generate", "id: 'a b'"), "experiments[0].id: must match", lines=1),
    c("entry-id-unicode", _replace("id: generate", "id: g\u00e9n"), "experiments[0].id: must match", lines=1),
    c("entry-id-int", _replace("id: generate", "id: 7"), "experiments[0].id: must match", lines=1),
    c("entry-id-long", _replace("id: generate", "id: " + "g" * 70), "experiments[0].id: must match", lines=1),
    c("entry-params-list", _replace("{max_new_tokens: 4, top_k: 5}", "[4, 5]"), "params: must be a mapping", lines=1),
    c("entry-params-empty-list", _replace("{max_new_tokens: 4, top_k: 5}", "[]"), "params: must be a mapping", lines=1),
    c("entry-params-string", _replace("{max_new_tokens: 4, top_k: 5}", "fast"), "params: must be a mapping", lines=1),
    c("param-wrong-type", _replace("top_k: 5", "top_k: five"), "params.top_k: must be int", lines=1),
    c("param-float-for-int", _replace("top_k: 5", "top_k: 5.0"), "params.top_k: must be int", lines=1),
    c("param-yes-for-int", _replace("top_k: 5", "top_k: yes"), "params.top_k: must be int, got True", lines=1),
    c(
        "param-int-for-bool",
        _replace("top_k: 5", "top_k: 5, stop_at_eos: 1"),
        "params.stop_at_eos: must be bool",
        lines=1,
    ),
    c("param-negative", _replace("max_new_tokens: 4", "max_new_tokens: -4"), "must be >= 1", lines=1),
    c("param-zero", _replace("max_new_tokens: 4", "max_new_tokens: 0"), "must be >= 1", lines=1),
    c(
        "param-huge",
        _replace("max_new_tokens: 4", "max_new_tokens: " + "9" * 40),
        "max_new_tokens",
        "64-bit integer",
        lines=1,
    ),
    c(
        "param-float-overflow",
        LIPSCHITZ + "    params: {eps_min: " + "9" * 400 + "}\n",
        "params.eps_min: must be float",
        lines=1,
    ),
    c("param-nan", LIPSCHITZ + "    params: {eps_min: .nan}\n", "params.eps_min", lines=None),
    c("repeats-zero", _entry("repeats: 0"), "experiments[0].repeats: must be >= 1", lines=1),
    c("repeats-negative", _entry("repeats: -2"), "experiments[0].repeats: must be >= 1", lines=1),
    c("repeats-float", _entry("repeats: 1.5"), "experiments[0].repeats: must be an integer", lines=1),
    c("repeats-string", _entry("repeats: two"), "experiments[0].repeats: must be an integer", lines=1),
    c("repeats-yes", _entry("repeats: yes"), "experiments[0].repeats: must be an integer, got True", lines=1),
    c("repeats-huge", _entry("repeats: 1000000000000"), "experiments[0].repeats: must be <=", lines=1),
    c("repeats-null", _entry("repeats:"), "experiments[0].repeats: must be an integer", lines=1),
    # -- needs ---------------------------------------------------------------------------------
    c(
        "needs-unknown",
        PAIR.replace("needs: [generate]", "needs: [genrate]"),
        "unknown id 'genrate'",
        "did you mean 'generate'?",
        lines=1,
    ),
    c("needs-self", _entry("needs: [generate]"), "cannot need itself", lines=1),
    c(
        "needs-cycle",
        GOOD + "    needs: [b]\n  - {name: exp4.generate, id: b, needs: [c]}\n"
        "  - {name: exp4.generate, id: c, needs: [generate]}\n",
        "cyclic needs: generate -> b -> c -> generate",
        lines=1,
    ),
    c("needs-int", PAIR.replace("needs: [generate]", "needs: 5"), "needs: must be a list of experiment ids"),
    c("needs-mapping", PAIR.replace("needs: [generate]", "needs: {generate: 1}"), "needs: must be a list"),
    c("needs-ints", PAIR.replace("needs: [generate]", "needs: [1]"), "needs: must be a list"),
    c(
        "needs-duplicate",
        PAIR.replace("needs: [generate]", "needs: [generate, generate]"),
        "duplicate id 'generate' in needs",
        lines=1,
    ),
    c("needs-missing-upstream", GOOD + "  - name: exp4.compare\n", "exp4.compare reads exp4.generate runs", lines=1),
    c(
        "needs-wrong-upstream",
        GOOD + "  - {name: exp2.lipschitz, id: lip}\n  - {name: exp3.compare, needs: [lip]}\n",
        "exp3.compare reads exp3.precision runs",
        lines=1,
    ),
    c(
        "needs-one-generate-run",
        GOOD + "  - {name: exp4.compare, needs: [generate]}\n",
        "exp4.compare needs at least 2 exp4.generate runs",
        "give 1",
        lines=1,
    ),
    c(
        "needs-divergence-one-run",
        GOOD + "  - {name: exp4.divergence, needs: [generate]}\n",
        "exp4.divergence needs at least 2",
        lines=1,
    ),
    c(
        "needs-internals-one-numerics",
        PAIR + "  - {name: exp4.internals, needs: [generate]}\n",
        "exp4.internals needs exp4.generate runs with at least 2 different",
        lines=1,
    ),
    c(
        "needs-token-flip-other-target",
        _replace(
            "targets: [a100]",
            "targets: [a100, h100]",
            LIPSCHITZ.replace("exp2.lipschitz", "exp6.equal_logits") + "    targets: [a100]\n"
            "  - {name: exp6.token_flip, needs: [lip]}\n",
        ),
        "exp6.token_flip on target h100",
        "of the same target and numerics",
        lines=1,
    ),
    c(
        "needs-heatmap-other-dtype",
        LIPSCHITZ.replace("exp2.lipschitz", "exp6.equal_logits")
        + "  - {name: exp7.heatmap, needs: [lip], numerics: {dtype: bfloat16}}\n",
        "exp7.heatmap on target a100, dtype bfloat16",
        lines=1,
    ),
    # -- problems that used to hide each other -----------------------------------------------------
    c(
        "hidden-duplicate-id",
        PAIR.replace("max_new_tokens: 4", "max_new_tokens: -4") + "  - {name: exp4.generate, id: generate}\n",
        "must be >= 1",
        "duplicate id 'generate'",
        lines=2,
    ),
    c(
        "hidden-needs-error",
        GOOD.replace("max_new_tokens: 4", "max_new_tokens: -4") + "  - {name: exp4.compare, needs: [generte]}\n",
        "must be >= 1",
        "unknown id 'generte'",
        lines=2,
    ),
    c(
        "hidden-needs-on-broken-entry",
        GOOD + "  - {name: exp4.compare, needs: [generate, generate], params: {x: 1}}\n",
        "unknown parameter",
        "duplicate id 'generate' in needs",
        lines=2,
    ),
    c(
        "hidden-all-at-once",
        _replace("campaign: demo", "campaign: Demo", PAIR.replace("top_k: 5", "top_k: 1")).replace(
            "needs: [generate]", "needs: [nope]"
        )
        + "  - {name: exp4.generate, id: compare}\n",
        "campaign: must match",
        "top_k",
        "duplicate id 'compare'",
        "unknown id 'nope'",
        lines=4,
    ),
    # -- sweeps --------------------------------------------------------------------------------
    c("sweep-empty-dtype", _entry("sweep: {dtype: []}"), "must be a non-empty list", "runs no task", lines=1),
    c("sweep-empty-param", _entry("sweep: {top_k: []}"), "must be a non-empty list", lines=1),
    c("sweep-scalar", _entry("sweep: {dtype: float32}"), "must be a non-empty list", lines=1),
    c("sweep-list", _entry("sweep: [dtype]"), "experiments[0].sweep: must be a mapping", lines=1),
    c("sweep-bad-dtype", _entry("sweep: {dtype: [float32, 16]}"), "sweep.dtype[1]: must be one of", lines=1),
    c("sweep-bad-param-type", _entry("sweep: {top_k: [3, x]}"), "sweep.top_k[1]: must be int", lines=1),
    c("sweep-bad-param-range", _entry("sweep: {top_k: [3, 1]}"), "sweep.top_k[1]: must be between", lines=1),
    c("sweep-duplicate-values", _entry("sweep: {dtype: [float32, float32]}"), "values must be distinct", lines=1),
    c(
        "sweep-too-many-tasks",
        _entry(
            "sweep: {max_new_tokens: ["
            + ", ".join(map(str, range(1, 801)))
            + "], top_k: ["
            + ", ".join(map(str, range(2, 302)))
            + "]}"
        ),
        "expands to 240000 tasks",
        lines=1,
    ),
    c("sweep-bool-as-kv", _entry("sweep: {kv_cache: [1, 0]}"), "sweep.kv_cache[0]", lines=2),
    # -- eager attention for JVP experiments -----------------------------------------------------
    c(
        "eager-model-sdpa",
        _replace("{source: tiny-random-llama}", "{source: tiny-random-llama, attn_implementation: sdpa}", LIPSCHITZ),
        "experiments[0]: attn_implementation is 'sdpa' (model.attn_implementation",
        "exp2.lipschitz takes JVPs",
        lines=1,
    ),
    c(
        "eager-override-sdpa",
        LIPSCHITZ + "    numerics: {attn_implementation: sdpa}\n",
        "experiments[0].numerics.attn_implementation: is 'sdpa'",
        lines=1,
    ),
    c(
        "eager-sweep-sdpa",
        LIPSCHITZ.replace("exp2.lipschitz", "exp6.equal_logits") + "    sweep: {attn_implementation: [eager, sdpa]}\n",
        "experiments[0].sweep.attn_implementation[1]: is 'sdpa'",
        "exp6.equal_logits takes JVPs",
        lines=1,
    ),
    c(
        "eager-perturb-singular",
        SDPA + "  - {name: exp4.perturb_until_divergence, id: p}\n",
        "exp4.perturb_until_divergence takes JVPs",
        "'singular' is among its directions",
        lines=1,
    ),
    c(
        "eager-perturb-swept-directions",
        SDPA + "  - name: exp4.perturb_until_divergence\n    sweep: {directions: [[random], [singular]]}\n",
        "sweep point directions=['singular']",
        lines=1,
    ),
    c(
        "eager-every-jvp-experiment",
        _replace(
            "{source: tiny-random-llama}",
            "{source: tiny-random-llama, attn_implementation: sdpa}",
            GOOD.split("experiments:")[0],
        )
        + "experiments:\n"
        + "".join(
            f"  - {{name: {n}}}\n"
            for n in (
                "exp1.layer_svd",
                "exp2.lipschitz",
                "exp3.precision",
                "exp5.module_lipschitz",
                "exp6.equal_logits",
            )
        ),
        "exp1.layer_svd takes",
        "exp2.lipschitz takes",
        "exp3.precision takes",
        "exp5.module_lipschitz takes",
        "exp6.equal_logits takes",
        lines=5,
    ),
    # -- resources -----------------------------------------------------------------------------
    c("resources-list", GOOD + "resources: [1]\n", "resources: must be a mapping", lines=1),
    c("resources-cpus-zero", GOOD + "resources: {cpus: 0}\n", "resources.cpus: must be >= 1", lines=1),
    c("resources-cpus-huge", GOOD + "resources: {cpus: 1000000000}\n", "resources.cpus: must be <=", lines=1),
    c("resources-cpus-yes", GOOD + "resources: {cpus: yes}\n", "resources.cpus: must be an integer", lines=1),
    c("resources-cpus-string", GOOD + "resources: {cpus: four}\n", "resources.cpus: must be an integer", lines=1),
    c("resources-mem-zero", GOOD + "resources: {mem_gb: 0}\n", "resources.mem_gb: must be a number > 0", lines=1),
    c("resources-mem-negative", GOOD + "resources: {mem_gb: -16}\n", "resources.mem_gb", lines=1),
    c("resources-mem-inf", GOOD + "resources: {mem_gb: .inf}\n", "resources.mem_gb", lines=1),
    c("resources-mem-string", GOOD + "resources: {mem_gb: 16G}\n", "resources.mem_gb", lines=1),
    c("resources-mem-huge", GOOD + "resources: {mem_gb: 1.0e+9}\n", "resources.mem_gb", lines=1),
    c("resources-mem-int-overflow", GOOD + f"resources: {{mem_gb: {'9' * 400}}}\n", "resources.mem_gb", lines=1),
    c("resources-time-zero", GOOD + "resources: {time_min: 0}\n", "resources.time_min: must be >= 1", lines=1),
    c("resources-time-float", GOOD + "resources: {time_min: 2.5}\n", "resources.time_min: must be an integer", lines=1),
    c("resources-time-huge", GOOD + "resources: {time_min: 99999999999}\n", "resources.time_min: must be <=", lines=1),
    c("resources-gpus-negative", GOOD + "resources: {gpus: -1}\n", "resources.gpus: must be >= 0", lines=1),
    c("resources-gpus-huge", GOOD + "resources: {gpus: 1000}\n", "resources.gpus: must be <=", lines=1),
    c("resources-array-zero", GOOD + "resources: {array_parallelism: 0}\n", "array_parallelism: must be >= 1", lines=1),
    c("resources-array-string", GOOD + "resources: {array_parallelism: none}\n", "array_parallelism", lines=1),
    c(
        "entry-resources-bad",
        _entry("resources: {time_min: -5, cpus: x}"),
        "experiments[0].resources.time_min",
        "experiments[0].resources.cpus",
        lines=2,
    ),
    # -- container -----------------------------------------------------------------------------
    c("container-list", GOOD + "container: [podman]\n", "container: must be a mapping", lines=1),
    c(
        "container-runtime-unknown",
        GOOD + "container: {runtime: podmn}\n",
        "container.runtime: must be one of",
        "did you mean 'podman'?",
        lines=1,
    ),
    c("container-runtime-int", GOOD + "container: {runtime: 1}\n", "container.runtime: must be one of", lines=1),
    c(
        "container-image-without-runtime",
        GOOD + "container: {image: x}\n",
        "container.image: is set but runtime is none",
        lines=1,
    ),
    c(
        "container-docker-without-image",
        GOOD + "container: {runtime: docker}\n",
        "runtime docker needs an image",
        lines=1,
    ),
    c(
        "container-image-option",
        GOOD + "container: {runtime: podman, image: --privileged}\n",
        "needs an image",
        lines=1,
    ),
    c("container-image-newline", GOOD + 'container: {runtime: podman, image: "a\\nb"}\n', "needs an image", lines=1),
    c(
        "container-network-string",
        GOOD + "container: {runtime: none, network: 'no'}\n",
        "container.network: must be true or false",
        lines=1,
    ),
    c(
        "container-gpu-yes-string",
        GOOD + "container: {runtime: none, gpu: 'yes'}\n",
        "container.gpu: must be auto",
        lines=1,
    ),
    c(
        "container-extra-string",
        GOOD + "container: {runtime: none, extra_args: --x}\n",
        "container.extra_args: must be a list",
        lines=1,
    ),
    c(
        "container-extra-empty-item",
        GOOD + "container: {runtime: none, extra_args: ['']}\n",
        "container.extra_args: must be a list",
        lines=1,
    ),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _main(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """`toolkit ARGS` through the console entry point, in this process."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = ["toolkit", *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # anything else is a traceback for the user
                import traceback

                err.write("Traceback (in process)\n" + traceback.format_exc())
                code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


def _write_case(case: Case, folder: Path) -> Path:
    for name, content in case.files.items():
        if content is None:
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(content)
    manifest = folder / "manifest.yaml"
    manifest.write_bytes(case.text if isinstance(case.text, bytes) else case.text.encode("utf-8"))
    return manifest


def _check_refusal(case: Case, manifest: Path, code: int, out: str, err: str, command: str) -> None:
    assert code == 2, (command, code, out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert lines, (command, out)
    if case.lines is not None:
        assert len(lines) == case.lines, (command, err)
    located = re.compile(rf"^error: {re.escape(str(manifest))}:\d+:\d+: \S")
    for line in lines:
        assert line.startswith("error: "), line
        assert located.match(line) or not line.startswith(f"error: {manifest}"), line
        if case.located and str(manifest) in line:
            assert located.match(line), f"not located at line:col: {line!r}"
    for word in case.words:
        assert word in err, f"{word!r} not in {err!r}"


@pytest.mark.parametrize("case", CASES)
def test_malformed_manifest_is_refused_cleanly(tmp_path: Path, case: Case):
    folder = tmp_path / "work"
    folder.mkdir()
    manifest = _write_case(case, folder)
    before = _tree(tmp_path)
    commands = [["validate", str(manifest)], ["plan", str(manifest)]]
    if CASES.index(next(p for p in CASES if p.values[0] is case)) % 3 == 0 or case.case_id.startswith(
        ("prompts-", "eager-", "needs-", "sweep-empty")
    ):
        commands.append(["submit", "--executor", "local", "--root", str(tmp_path / "out"), str(manifest)])
    for command in commands:
        code, out, err = _main(command, folder)
        _check_refusal(case, manifest, code, out, err, command[0])
        assert _tree(tmp_path) == before, command  # nothing created: no campaign folder, no store
        assert not (folder / "campaigns").exists() and not (tmp_path / "out").exists()
        assert not (folder / "pwned").exists()


def test_corpus_is_large_and_ids_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "case_id",
    ["prompts-empty-list", "eager-sweep-sdpa", "not-utf8-latin1", "hidden-all-at-once", "prompts-file-folder"],
)
def test_subprocess_refusals(tmp_path: Path, case_id: str):
    """The same refusals through a real `toolkit` process (validate, plan, submit)."""
    case = next(p.values[0] for p in CASES if p.id == case_id)
    manifest = _write_case(case, tmp_path)
    before = _tree(tmp_path)
    for command in (
        ["validate", str(manifest)],
        ["plan", str(manifest)],
        ["submit", "--executor", "local", "--root", str(tmp_path / "out"), str(manifest)],
    ):
        result = run_cli(*command, cwd=tmp_path, timeout=120)
        _check_refusal(case, manifest, result.code, result.out, result.err, command[0])
        assert result.out == ""
        assert _tree(tmp_path) == before


def test_a_manifest_that_is_not_a_file(tmp_path: Path):
    """A folder, or a missing path, given as the manifest: one line, exit 2, no location to give."""
    for target, words in [(tmp_path, "cannot read"), (tmp_path / "nope.yaml", "no such file")]:
        code, out, err = _main(["validate", str(target)], tmp_path)
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert err.splitlines() == [f"error: {target}: {words}" + err.split(words, 1)[1].rstrip("\n")], err


# -- extreme values for every param of every experiment -------------------------------------------

# The smallest valid manifest around each experiment: its upstream entries first.
UPSTREAM = {
    "exp3.compare": "  - {name: exp3.precision, id: up, sweep: {dtype: [float32, bfloat16]}}\n",
    "exp4.compare": "  - {name: exp4.generate, id: up, repeats: 2}\n",
    "exp4.divergence": "  - {name: exp4.generate, id: up, repeats: 2}\n",
    "exp4.internals": "  - {name: exp4.generate, id: up, sweep: {dtype: [float32, bfloat16]}}\n",
    "exp4.embedding_similarity": "  - {name: exp4.perturb_until_divergence, id: up}\n",
    "exp6.token_flip": "  - {name: exp6.equal_logits, id: up}\n",
    "exp7.heatmap": "  - {name: exp6.equal_logits, id: up}\n",
    "exp7.zoom": "  - {name: exp6.equal_logits, id: eq}\n  - {name: exp7.heatmap, id: up, needs: [eq]}\n",
    "exp7.randomness": "  - {name: exp6.equal_logits, id: eq}\n  - {name: exp7.heatmap, id: up, needs: [eq]}\n",
}
SAMPLE_PDF = Path(__file__).resolve().parents[1] / "manifests" / "data" / "sample.pdf"
REQUIRED = {"pdf.word_prediction": {"pdf_path": str(SAMPLE_PDF)}}
EXTREMES = [
    "null",
    "true",
    "-1",
    "0",
    "1",
    "9" * 30,
    "-" + "9" * 30,
    "9" * 400,
    ".nan",
    ".inf",
    "-.inf",
    "1.0e-320",
    "''",
    "x",
    "[]",
    "[0]",
    "[-1]",
    "[" + "9" * 30 + "]",
    "[.nan]",
    "{}",
    "[[]]",
]


def _experiment_manifest(name: str, params: str) -> str:
    needs = ", needs: [up]" if name in UPSTREAM else ""
    return (
        f"campaign: extremes\nmodel: {{source: tiny-random-llama}}\n{PROMPTS}\nexperiments:\n"
        f"{UPSTREAM.get(name, '')}  - {{name: {name}, id: target{needs}, params: {{{params}}}}}\n"
    )


@pytest.mark.parametrize("name", experiments.names())
def test_extreme_param_values_are_accepted_or_refused_never_break(tmp_path: Path, name: str, monkeypatch):
    import functools

    from toolkit.manifest import checker, load_manifest
    from toolkit.plan import build_plan

    monkeypatch.setattr(checker, "load_site", functools.lru_cache(maxsize=None)(checker.load_site))  # speed only

    module = experiments.get(name)
    base = ", ".join(f"{k}: {v!r}" for k, v in REQUIRED.get(name, {}).items())
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(_experiment_manifest(name, base))
    build_plan(load_manifest(manifest))  # the base manifest is valid
    for f in fields(module.Params):
        for value in EXTREMES:
            params = ", ".join(
                p for p in (base if f.name not in REQUIRED.get(name, {}) else "", f"{f.name}: {value}") if p
            )
            manifest.write_text(_experiment_manifest(name, params))
            try:
                build_plan(load_manifest(manifest))
            except ManifestError as err:
                assert all(re.match(rf"{re.escape(str(manifest))}:\d+:\d+: ", p) for p in err.problems), err.problems
                assert not any("internal error" in p or "\n" in p for p in err.problems), err.problems
            except ToolkitError as err:  # e.g. a plan error: still a clean refusal
                assert err.exit_code == 2, (f.name, value, err)


# -- every node of a manifest that uses every section, replaced or removed -----------------------

RICH = {
    "campaign": "rich",
    "output": "out",
    "site": "default",
    "model": {
        "source": "tiny-random-llama",
        "revision": None,
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": "eager",
        "kv_cache": True,
        "tf32": False,
        "deterministic": True,
    },
    "prompts": ["one", "two"],
    "targets": ["a100", "h100"],
    "experiments": [
        {
            "name": "exp4.generate",
            "id": "generate",
            "params": {"max_new_tokens": 4, "top_k": 5},
            "sweep": {"dtype": ["float32", "bfloat16"], "top_k": [5, 6]},
            "repeats": 2,
            "targets": ["a100"],
            "numerics": {"kv_cache": False},
            "resources": {"time_min": 30},
        },
        {"name": "exp4.compare", "id": "compare", "needs": ["generate"]},
        {"name": "exp2.lipschitz", "id": "lip", "params": {"top_k": 2}, "sweep": {"jvp_mode": ["forward"]}},
    ],
    "resources": {"time_min": 60, "cpus": 4, "mem_gb": 16, "gpus": 1, "array_parallelism": None},
    "container": {"runtime": "none", "network": False, "gpu": "auto", "extra_args": []},
}
NODE_VALUES = [None, True, 0, -1, 2**70, float("nan"), "", "x" * 300, "../x", "A b", "a\nb", [], [None], {}, {1: 2}]


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, path + (index,))


def _with(value, path, new, remove=False):
    import copy

    out = copy.deepcopy(value)
    if not path:
        return new
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


def test_every_node_replaced_or_removed_is_accepted_or_refused_never_breaks(tmp_path: Path, monkeypatch):
    import functools

    import yaml

    from toolkit.manifest import checker, load_manifest
    from toolkit.plan import build_plan

    monkeypatch.setattr(checker, "load_site", functools.lru_cache(maxsize=None)(checker.load_site))  # speed only
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(RICH))
    assert len(build_plan(load_manifest(manifest)).tasks) == 11  # 8 generate, 1 compare, 2 lipschitz: valid
    variants = 0
    for path in _paths(RICH):
        for new, remove in [(v, False) for v in NODE_VALUES] + [(None, True)] * bool(path):
            manifest.write_text(yaml.safe_dump(_with(RICH, path, new, remove)))
            variants += 1
            try:
                build_plan(load_manifest(manifest))
            except ManifestError as err:
                assert err.problems and all(
                    re.match(rf"{re.escape(str(manifest))}:\d+:\d+: \S", p) for p in err.problems
                ), (path, new, err.problems)
                assert not any("internal error" in p or "\n" in p for p in err.problems), (path, new, err.problems)
    assert variants > 1000
    assert not (tmp_path / "out").exists()
