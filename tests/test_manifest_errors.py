"""Malformed manifests through the real CLI: one located line per problem, exit 2, nothing created.

Every case runs `toolkit validate` and `toolkit submit --executor local --root <tmp>/out` in a
subprocess and checks: exit code 2; exactly one stderr line per problem, each starting with
`error: <manifest>:<line>:<col>: ` at the expected position; the expected words in each line; no
traceback; and not a single file or folder created (no `out/`, no `campaigns/`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from toolkit.experiments import names

# One experiment, everything valid: the cases below each break one thing (or three).
GOOD = """\
campaign: demo
model: {source: tiny-random-llama}
targets: [a100]
prompts: ["The capital of France is"]
experiments:
  - name: exp4.generate
    id: generate
    params: {max_new_tokens: 4, top_k: 5}
"""

PROMPTS = 'prompts: ["The capital of France is"]'

TWO_STAGES = (
    GOOD
    + """\
  - name: exp4.compare
    id: compare
    needs: [generate]
"""
)


def _bomb() -> str:
    """Billion laughs: 9 levels of 9 aliases, 9**9 strings once expanded."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    return "\n".join(lines) + "\ncampaign: *i\n"


def case(case_id: str, text: str | bytes, *expected: tuple[str, str | tuple[str, ...]]):
    """A table row: the manifest, then per stderr line ("line:col", substring or substrings)."""
    return pytest.param(text, list(expected), id=case_id)


CASES = [
    case("yaml-syntax", "campaign: [demo\nmodel: x\n", ("2:6", ("YAML syntax", "expected ',' or ']'"))),
    case("yaml-tab-indent", "campaign: demo\n\tmodel: x\n", ("2:1", ("YAML syntax", "'\\t'"))),
    case(
        "not-a-mapping",
        "- campaign: demo\n- experiments: []\n",
        ("1:1", ("a manifest must be a mapping", "got a list")),
    ),
    case("empty-file", "# nothing but a comment\n", ("1:1", ("a manifest must be a mapping", "got nothing"))),
    case(
        "unknown-top-key-did-you-mean",
        GOOD.replace("experiments:", "experiment:"),
        ("5:1", ("experiment: unknown key", "did you mean 'experiments'?")),
        ("1:1", "missing required key 'experiments'"),
    ),
    case("missing-campaign", GOOD.replace("campaign: demo\n", ""), ("1:1", "missing required key 'campaign'")),
    case(
        "missing-model",
        GOOD.replace("model: {source: tiny-random-llama}\n", ""),
        ("1:1", "missing required key 'model'"),
    ),
    case("empty-campaign", GOOD.replace("campaign: demo", "campaign:"), ("1:10", "campaign: is empty")),
    case("campaign-dotdot", GOOD.replace("demo", "../evil"), ("1:11", ("campaign: must match", "got '../evil'"))),
    case("campaign-space", GOOD.replace("demo", "'a b'"), ("1:11", ("campaign: must match", "got 'a b'"))),
    case("campaign-shell", GOOD.replace("demo", "'x;rm -rf'"), ("1:11", ("campaign: must match", "got 'x;rm -rf'"))),
    case("campaign-uppercase", GOOD.replace("demo", "Demo"), ("1:11", ("campaign: must match", "got 'Demo'"))),
    case("campaign-70-chars", GOOD.replace("demo", "a" * 70), ("1:11", ("campaign: must match", "{0,63}", "a" * 70))),
    case(
        "targets-a-string",
        GOOD.replace("targets: [a100]", "targets: a100"),
        ("3:10", ("targets: must be a non-empty list of GPU types", "got 'a100'")),
    ),
    case(
        "param-out-of-range",
        GOOD.replace("max_new_tokens: 4", "max_new_tokens: -3"),
        ("8:30", "experiments[0].params.max_new_tokens: must be >= 1, got -3"),
    ),
    case(
        "param-wrong-type",
        GOOD.replace("top_k: 5", "top_k: ten"),
        ("8:40", "experiments[0].params.top_k: must be int, got 'ten'"),
    ),
    case(
        "param-unknown-did-you-mean",
        GOOD.replace("max_new_tokens: 4", "max_new_token: 4"),
        ("8:14", ("experiments[0].params.max_new_token: unknown parameter", "did you mean 'max_new_tokens'?")),
    ),
    case(
        "experiment-unknown-did-you-mean",
        GOOD.replace("exp4.generate", "exp4.generat"),
        (
            "6:11",
            (
                "experiments[0].name: unknown experiment 'exp4.generat'",
                "did you mean 'exp4.generate'?",
                "known experiments: " + ", ".join(names()),
            ),
        ),
    ),
    case(
        "target-unknown",
        GOOD.replace("[a100]", "[a100, b200]"),
        (
            "3:17",
            ("targets[1]: unknown target 'b200' for site 'default'", "known: a100, h100, h200, v100, l40s, a10, cpu"),
        ),
    ),
    case(
        "target-duplicate",
        GOOD.replace("[a100]", "[a100, h100, a100]"),
        ("3:23", "targets[2]: duplicate target 'a100'"),
    ),
    case(
        "experiment-duplicate-id",
        GOOD + "  - name: exp4.generate\n    id: generate\n",
        ("10:9", ("experiments[1].id: duplicate id 'generate'", "also experiments[0]")),
    ),
    case(
        "needs-unknown-id",
        GOOD + "    needs: [genrate]\n",
        ("9:13", ("experiments[0].needs[0]: unknown id 'genrate'", "did you mean 'generate'?")),
    ),
    case(
        "needs-duplicate-id",
        TWO_STAGES.replace("needs: [generate]", "needs: [generate, generate]"),
        ("11:23", "experiments[1].needs[1]: duplicate id 'generate' in needs"),
    ),
    case(
        "needs-cycle",
        GOOD + "    needs: [other]\n  - name: exp4.generate\n    id: other\n    needs: [generate]\n",
        ("9:12", "experiments[0].needs: cyclic needs: generate -> other -> generate"),
    ),
    case(
        "compare-without-needs",
        GOOD + "  - name: exp4.compare\n    id: compare\n",
        (
            "9:5",
            (
                "experiments[1].needs: exp4.compare reads exp4.generate runs",
                "add the id of an exp4.generate entry to needs",
            ),
        ),
    ),
    case(
        "dtype-float8",
        GOOD.replace("{source: tiny-random-llama}", "{source: tiny-random-llama, dtype: float8}"),
        ("2:43", "model.dtype: must be one of float32, bfloat16, float16, float64, got 'float8'"),
    ),
    case(
        "attn-implementation-unknown",
        GOOD.replace("{source: tiny-random-llama}", "{source: tiny-random-llama, attn_implementation: flash}"),
        (
            "2:57",
            "model.attn_implementation: must be one of eager, sdpa, sdpa_math, sdpa_efficient, sdpa_flash, "
            "flash_attention_2, got 'flash'",
        ),
    ),
    case(
        "python-tag-sequence",
        GOOD.replace("campaign: demo", 'campaign: !!python/object/apply:os.system ["touch pwned"]'),
        ("1:11", ("unsupported YAML tag", "python/object/apply:os.system")),
    ),
    case(
        "python-tag-scalar",
        GOOD + "output: !!python/name:os.system\n",
        ("9:9", ("could not determine a constructor", "python/name:os.system")),
    ),
    case("alias-bomb", _bomb(), ("1:22", ("alias bomb?", "without such aliases"))),
    case(
        "merge-key",
        "base: &b {top_k: 5}\n" + GOOD.replace("{max_new_tokens: 4, top_k: 5}", "{<<: *b}"),
        ("9:14", "merge keys (<<) are not supported"),
    ),
    case("duplicate-mapping-key", GOOD + "campaign: other\n", ("9:1", "duplicate key 'campaign'")),
    case(
        "sweep-unknown-key",
        GOOD + "    sweep: {max_tokens: [1, 2]}\n",
        ("9:13", ("experiments[0].sweep.max_tokens: unknown sweep key", "max_new_tokens", "dtype")),
    ),
    case(
        "sweep-empty-list",
        GOOD + "    sweep: {dtype: []}\n",
        (
            "9:20",
            ("experiments[0].sweep.dtype: must be a non-empty list of values", "an empty sweep runs no task", "got []"),
        ),
    ),
    case(
        "sweep-bad-dtype",
        GOOD + "    sweep: {dtype: [float32, float8]}\n",
        ("9:30", "experiments[0].sweep.dtype[1]: must be one of float32, bfloat16, float16, float64, got 'float8'"),
    ),
    case(
        "sweep-bad-param-value",
        GOOD + "    sweep: {max_new_tokens: [4, 0]}\n",
        ("9:33", "experiments[0].sweep.max_new_tokens[1]: must be >= 1, got 0"),
    ),
    case("repeats-zero", GOOD + "    repeats: 0\n", ("9:14", "experiments[0].repeats: must be >= 1, got 0")),
    case("cpus-negative", GOOD + "resources: {cpus: -1}\n", ("9:19", "resources.cpus: must be >= 1, got -1")),
    case(
        "mem-nan",
        GOOD + "resources: {mem_gb: .nan}\n",
        ("9:21", "resources.mem_gb: must be a number > 0 and <= 65536, got nan"),
    ),
    case(
        "prompts-file-missing",
        GOOD.replace(PROMPTS, "prompts: {file: missing-prompts.txt}"),
        ("4:17", ("prompts.file: cannot read 'missing-prompts.txt'", "No such file")),
    ),
    case(
        "prompts-file-nul-byte",
        GOOD.replace(PROMPTS, 'prompts: {file: "a\\0b"}'),
        ("4:17", ("prompts.file: must be a path to a text file", "got 'a\\x00b'")),
    ),
    case(
        "experiments-empty-list",
        GOOD.split("experiments:")[0] + "experiments: []\n",
        ("5:14", "experiments: must be a non-empty list of experiments, got an empty list"),
    ),
    case(
        "container-runtime-unknown",
        GOOD + "container: {runtime: lxc}\n",
        ("9:22", "container.runtime: must be one of none, apptainer, docker, podman, got 'lxc'"),
    ),
    case(
        "model-source-not-found",
        GOOD.replace("tiny-random-llama", "./nope"),
        ("2:17", ("model.source: './nope' is not a packaged model", "an existing folder")),
    ),
    case(
        "site-unknown",
        GOOD + "site: nosuch\n",
        ("9:7", ("site: unknown site profile 'nosuch'", "known: default, testcluster")),
    ),
    case("site-nul-byte", GOOD + 'site: "x\\0y.yaml"\n', ("9:7", "site: unknown site profile")),
    case(
        "not-utf8-latin1",
        GOOD.replace("tiny-random", "tiny-r\xe9ndom").encode("latin-1"),
        ("2:23", ("not UTF-8 text", "invalid continuation byte at byte 37")),
    ),
    case(
        "not-utf8-after-multibyte",
        "campaign: d\u00fc".encode() + b"\xffmo\n" + GOOD.split("\n", 1)[1].encode(),
        ("1:13", ("not UTF-8 text", "at byte 13")),
    ),
    case(
        "three-problems-in-order",
        GOOD.replace("demo", "Bad").replace("[a100]", "[b200]").replace("top_k: 5", "top_k: 1"),
        ("1:11", "campaign: must match"),
        ("3:11", "targets[0]: unknown target 'b200'"),
        ("8:40", "experiments[0].params.top_k: must be between 2 and 1000, got 1"),
    ),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check_stderr(err: str, manifest: Path, expected: list[tuple[str, str | tuple[str, ...]]]) -> None:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == len(expected), err
    prefix = re.compile(rf"^error: {re.escape(str(manifest))}:(\d+):(\d+): ")
    for line, (where, words) in zip(lines, expected):
        match = prefix.match(line)
        assert match, f"not `error: {manifest}:<line>:<col>: `: {line!r}"
        assert f"{match[1]}:{match[2]}" == where, line
        for word in (words,) if isinstance(words, str) else words:
            assert word in line, f"{word!r} not in {line!r}"


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_malformed_manifest_is_rejected_with_located_errors(
    tmp_path: Path, text: str | bytes, expected: list[tuple[str, str | tuple[str, ...]]]
):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    before = _tree(tmp_path)
    commands = [
        ("validate", str(manifest)),
        ("submit", "--executor", "local", "--root", str(tmp_path / "out"), str(manifest)),
    ]
    for command in commands:
        result = run_cli(*command, cwd=tmp_path, timeout=60)
        assert result.code == 2, (command, result.code, result.err)
        assert result.out == "", result.out
        _check_stderr(result.err, manifest, expected)
        assert _tree(tmp_path) == before, command
        assert not (tmp_path / "out").exists() and not (tmp_path / "campaigns").exists()
        assert not (tmp_path / "pwned").exists()  # the python tag was not executed


def test_bad_site_profile_files_are_located_errors(tmp_path: Path):
    (tmp_path / "latin1.yaml").write_bytes(b"name: x\ndescription: caf\xe9\ntargets: {a100: {}}\n")
    (tmp_path / "typo.yaml").write_text("name: typo\ntarget:\n  a100: {gres: 'gpu:a100:1'}\n")
    for site, expected in [
        ("latin1.yaml", f"error: {tmp_path / 'latin1.yaml'}:1:1: cannot read site profile: "),
        ("typo.yaml", f"error: {tmp_path / 'typo.yaml'}:2:1: unknown key 'target'"),
    ]:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(GOOD + f"site: {site}\n")
        before = _tree(tmp_path)
        result = run_cli("validate", str(manifest), cwd=tmp_path, timeout=60)
        assert result.code == 2 and "Traceback" not in result.err, result.err
        assert result.err.splitlines()[0].startswith(expected), result.err
        assert _tree(tmp_path) == before


def test_validate_missing_file_is_one_line(tmp_path: Path):
    result = run_cli("validate", str(tmp_path / "nope.yaml"), cwd=tmp_path, timeout=60)
    assert result.code == 2
    assert result.out == ""
    assert result.err.splitlines() == [f"error: {tmp_path / 'nope.yaml'}: no such file"]
    assert "Traceback" not in result.err
    assert list(tmp_path.iterdir()) == []


def test_debug_flag_shows_traceback(tmp_path: Path):
    result = run_cli("--debug", "validate", str(tmp_path / "nope.yaml"), cwd=tmp_path, timeout=60)
    assert result.code == 2  # the same exit code as without --debug
    assert "Traceback" in result.err
    assert "ManifestError" in result.err and "no such file" in result.err


def test_debug_flag_shows_traceback_for_an_invalid_manifest(tmp_path: Path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(GOOD.replace("top_k: 5", "top_k: ten"))
    plain = run_cli("validate", str(manifest), cwd=tmp_path, timeout=60)
    debug = run_cli("--debug", "validate", str(manifest), cwd=tmp_path, timeout=60)
    assert plain.code == 2 and "Traceback" not in plain.err
    assert debug.code == 2 and "Traceback" in debug.err and "must be int, got 'ten'" in debug.err
