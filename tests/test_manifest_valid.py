"""Valid manifests, in process: what `load_manifest` returns and how `build_plan` expands it."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from toolkit.errors import ManifestError
from toolkit.manifest import load_manifest
from toolkit.plan import ANY_TARGET, build_plan

SHIPPED = REPO / "manifests" / "gpu_divergence.yaml"

SMALL = """\
campaign: small
model: {source: tiny-random-llama}
prompts: ["one", "two"]
targets: [a100, h100]
experiments:
  - name: exp4.generate
    id: generate
    params: {max_new_tokens: 4, top_k: 5}
"""


def _write(folder: Path, text: str, name: str = "manifest.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _ids(path: Path) -> list[str]:
    return sorted(build_plan(load_manifest(path)).tasks)


def test_shipped_manifest_expands_to_thirteen_tasks_in_two_stages():
    manifest = load_manifest(SHIPPED)
    assert manifest.campaign == "gpu-divergence" and manifest.targets == ("a100", "h100")
    assert len(manifest.prompts) == 4 and manifest.site.name == "default"
    plan = build_plan(manifest)
    assert len(plan.tasks) == 13 and len(plan.stages) == 2
    generate, compare = plan.tasks_of("generate"), plan.tasks_of("compare")
    batch = plan.tasks_of("generate_batch")  # the batch axis (#14): float32, batch of 4
    assert len(generate) == 8 and len(batch) == 4 and len(compare) == 1
    assert {(t.target, t.repeat, t.numerics.dtype, t.numerics.batch_size) for t in batch} == {
        (target, repeat, "float32", 4) for target in ("a100", "h100") for repeat in (0, 1)
    }
    assert all(t.numerics.batch_size == 1 for t in generate)
    assert set(compare[0].inputs) == {t.task_id for t in generate + batch}
    combos = {(t.target, t.repeat, t.numerics.dtype) for t in generate}
    assert combos == {
        (target, repeat, dtype) for target in ("a100", "h100") for repeat in (0, 1) for dtype in ("float32", "bfloat16")
    }
    assert all(t.stage == 1 and t.inputs == () for t in generate)
    assert all(t.params["max_new_tokens"] == 48 and t.params["top_k"] == 20 for t in generate)
    assert compare[0].stage == 2 and compare[0].target == ANY_TARGET
    assert [s.exp_ids for s in plan.stages] == [("generate", "generate_batch"), ("compare",)]
    assert len({t.task_id for t in plan.tasks.values()}) == 13


def test_task_ids_are_stable_and_follow_params_not_formatting(tmp_path: Path):
    text = SHIPPED.read_text()
    first, second = _ids(SHIPPED), _ids(SHIPPED)
    assert first == second

    # Comments, blank lines, indentation of flow mappings and key spacing: same ids.
    reformatted = "# a new leading comment\n\n" + text.replace("top_k: 20}", "top_k:   20 }   # tokens").replace(
        "repeats: 2 ", "repeats:    2 "
    ).replace("\nresources:", "\n\n# the end\nresources:")
    assert reformatted != text
    assert _ids(_write(tmp_path / "fmt", reformatted)) == first

    # A changed param: every generate id changes, and so does compare's (its inputs changed).
    changed = text.replace("max_new_tokens: 48", "max_new_tokens: 49")
    assert changed != text
    changed_ids = _ids(_write(tmp_path / "param", changed))
    assert len(changed_ids) == 13 and not set(changed_ids) & set(first)

    # A changed prompt changes every id too (prompts are part of the identity).
    prompt = text.replace("The capital of France is", "The capital of Italy is")
    assert prompt != text
    assert not set(_ids(_write(tmp_path / "prompt", prompt))) & set(first)


def test_prompts_file_is_relative_to_the_manifest_one_per_nonempty_line(tmp_path: Path, monkeypatch):
    folder = tmp_path / "sub"
    _write(folder, "First prompt\n\n   \nSecond prompt, with: yaml-ish text\n\tThird\n", "prompts.txt")
    path = _write(folder, SMALL.replace('prompts: ["one", "two"]', "prompts: {file: prompts.txt}"))
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    manifest = load_manifest(path)
    assert manifest.prompts == ("First prompt", "Second prompt, with: yaml-ish text", "\tThird")
    inline = _write(
        tmp_path / "inline",
        SMALL.replace(
            'prompts: ["one", "two"]', 'prompts: ["First prompt", "Second prompt, with: yaml-ish text", "\\tThird"]'
        ),
    )
    assert _ids(inline) == _ids(path)  # same prompts, same ids, wherever they were written


def test_sweep_over_dtype_sets_task_numerics(tmp_path: Path):
    path = _write(tmp_path, SMALL + "    sweep: {dtype: [float32, bfloat16, float16]}\n")
    tasks = build_plan(load_manifest(path)).tasks_of("generate")
    assert len(tasks) == 2 * 3
    assert {t.numerics.dtype for t in tasks} == {"float32", "bfloat16", "float16"}
    for task in tasks:
        assert task.sweep_point == {"dtype": task.numerics.dtype}
        assert task.numerics.attn_implementation == "eager" and task.numerics.kv_cache is True
        assert "dtype" not in task.params


def test_sweep_over_a_param_sets_task_params(tmp_path: Path):
    path = _write(tmp_path, SMALL + "    sweep: {max_new_tokens: [4, 8]}\n    repeats: 3\n")
    tasks = build_plan(load_manifest(path)).tasks_of("generate")
    assert len(tasks) == 2 * 2 * 3
    assert sorted(t.params["max_new_tokens"] for t in tasks) == [4] * 6 + [8] * 6
    assert all(t.params["top_k"] == 5 and t.params["stop_at_eos"] is True for t in tasks)
    assert all(t.sweep_point == {"max_new_tokens": t.params["max_new_tokens"]} for t in tasks)
    assert {t.repeat for t in tasks} == {0, 1, 2}
    assert len({t.task_id for t in tasks}) == 12


def test_experiment_level_targets_restrict_tasks(tmp_path: Path):
    path = _write(tmp_path, SMALL + "    targets: [a100]\n  - name: exp4.generate\n    id: both\n")
    manifest = load_manifest(path)
    assert manifest.experiment("generate").targets == ("a100",)
    assert manifest.experiment("both").targets == ("a100", "h100")
    plan = build_plan(manifest)
    assert [t.target for t in plan.tasks_of("generate")] == ["a100"]
    assert sorted(t.target for t in plan.tasks_of("both")) == ["a100", "h100"]


def test_needs_puts_compare_in_stage_two_with_generate_ids_as_inputs(tmp_path: Path):
    path = _write(tmp_path, SMALL + "    repeats: 2\n  - name: exp4.compare\n    id: compare\n    needs: generate\n")
    plan = build_plan(load_manifest(path))
    generate, (compare,) = plan.tasks_of("generate"), plan.tasks_of("compare")
    assert len(generate) == 4 and all(t.stage == 1 for t in generate)
    assert compare.stage == 2 and compare.target == ANY_TARGET
    assert compare.inputs == tuple(sorted(t.task_id for t in generate))
    assert [s.index for s in plan.stages] == [1, 2]
    assert [s.exp_ids for s in plan.stages] == [("generate",), ("compare",)]
    assert sorted(i for g in plan.stages[0].groups for i in g.task_ids) == sorted(t.task_id for t in generate)


def test_plan_cli_lists_every_task_and_the_gres(tmp_path: Path):
    before = set(tmp_path.iterdir())
    result = run_cli("plan", str(SHIPPED), "--root", str(tmp_path / "out"), cwd=tmp_path, timeout=60)
    assert result.code == 0, result.err
    assert result.err == ""
    plan = build_plan(load_manifest(SHIPPED))
    for task_id in plan.tasks:
        assert task_id in result.out
    assert "--gres=gpu:a100:1" in result.out and "--gres=gpu:h100:1" in result.out
    assert "13 task(s) in 2 stage(s)" in result.out
    assert set(tmp_path.iterdir()) == before  # a dry run creates nothing


def test_validate_cli_accepts_the_shipped_manifest(tmp_path: Path):
    result = run_cli("validate", str(SHIPPED), cwd=tmp_path, timeout=60)
    assert result.code == 0, result.err
    assert "valid — campaign gpu-divergence, 13 task(s) in 2 stage(s)" in result.out
    assert list(tmp_path.iterdir()) == []


def test_site_testcluster_accepts_its_targets(tmp_path: Path):
    path = _write(tmp_path, SMALL + "site: testcluster\n")
    manifest = load_manifest(path)
    assert manifest.site.name == "testcluster"
    assert manifest.site.targets["a100"]["gres"] == "gpu:a100:1"
    assert sorted(t.target for t in build_plan(manifest).tasks.values()) == ["a100", "h100"]
    # testcluster only knows a100 and h100: a target of the default site is refused there.
    other = _write(tmp_path / "other", SMALL.replace("[a100, h100]", "[a100, h200]") + "site: testcluster\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(other)
    assert len(caught.value.problems) == 1
    assert "unknown target 'h200' for site 'testcluster'" in caught.value.problems[0]
    assert "known: a100, h100" in caught.value.problems[0]
    # ... and --site overrides the manifest's site.
    assert load_manifest(other, site="default").site.name == "default"


def test_a_site_profile_given_as_a_path_next_to_the_manifest(tmp_path: Path):
    shutil.copy(REPO / "slurm" / "sites" / "testcluster.yaml", tmp_path / "mysite.yaml")
    path = _write(tmp_path, SMALL + "site: mysite.yaml\n")
    assert load_manifest(path).site.path == str((tmp_path / "mysite.yaml").resolve())


def test_an_alias_reused_legitimately_is_accepted(tmp_path: Path):
    path = _write(
        tmp_path,
        textwrap.dedent("""\
        campaign: aliases
        model: {source: tiny-random-llama}
        targets: [a100]
        prompts: [hello]
        experiments:
          - name: exp4.generate
            id: fp32
            params: &short {max_new_tokens: 4, top_k: 5, stop_at_eos: false}
          - name: exp4.generate
            id: bf16
            params: *short
            numerics: {dtype: bfloat16}
          - name: exp4.generate
            id: fp16
            params: *short
            numerics: {dtype: float16}
        """),
    )
    manifest = load_manifest(path)
    params = [e.params for e in manifest.experiments]
    assert params[0] == params[1] == params[2]
    assert params[0].max_new_tokens == 4 and params[0].stop_at_eos is False
    assert [e.numerics.dtype for e in manifest.experiments] == ["float32", "bfloat16", "float16"]
    assert len(build_plan(manifest).tasks) == 3


def test_defaults_of_a_minimal_manifest(tmp_path: Path):
    path = _write(
        tmp_path,
        "campaign: minimal\nmodel: {source: tiny-random-llama}\nprompts: [hello]\n"
        "experiments: [{name: exp4.generate}]\n",
    )
    manifest = load_manifest(path)
    assert manifest.targets == ("cpu",) and manifest.output == Path("campaigns")
    assert manifest.prompts == ("hello",) and manifest.container.runtime == "none"
    (task,) = build_plan(manifest).tasks.values()
    assert task.exp_id == "exp4.generate" and task.target == "cpu" and task.repeat == 0
    assert task.params == {"max_new_tokens": 64, "top_k": 20, "stop_at_eos": True, "store_hidden": True}


# -- what validation reads from the experiments' declarations -------------------------------------


def test_every_experiment_declares_prompts_and_eager_attention_explicitly():
    """READS_PROMPTS and NEEDS_EAGER_ATTENTION are written in every experiment module (no default),
    and the registry's answers match what the modules do: tasks that iterate over ctx.prompts read
    prompts, tasks that take JVPs (toolkit.numerics.jacobian / session) need eager attention."""
    import inspect

    from toolkit import experiments

    for name in experiments.names():
        module = experiments.get(name)
        source = inspect.getsource(module)
        assert re.search(r"^READS_PROMPTS = (True|False)", source, re.M), name
        assert re.search(r"^(NEEDS_EAGER_ATTENTION = (True|False)|def NEEDS_EAGER_ATTENTION\()", source, re.M), name
        assert experiments.reads_prompts(module) == ("ctx.prompts" in source), name
        takes_jvps = "jacobian_setup(" in source or "require_eager(" in source
        assert experiments.needs_eager_attention(module, module.Params(**_required(name))) == takes_jvps, name


def _required(name: str) -> dict:
    return {"pdf_path": str(REPO / "manifests" / "data" / "sample.pdf")} if name == "pdf.word_prediction" else {}


def test_perturb_under_sdpa_is_valid_without_the_singular_direction(tmp_path: Path):
    path = _write(
        tmp_path,
        SMALL.replace("{source: tiny-random-llama}", "{source: tiny-random-llama, attn_implementation: sdpa}")
        + "  - {name: exp4.perturb_until_divergence, params: {directions: [random, gradient]}}\n"
        + "  - {name: exp6.token_flip, numerics: {attn_implementation: eager}, needs: [eq]}\n"
        + "  - {name: exp6.equal_logits, id: eq, numerics: {attn_implementation: eager}}\n",
    )
    manifest = load_manifest(path)
    assert [e.numerics.attn_implementation for e in manifest.experiments] == ["sdpa", "sdpa", "eager", "eager"]


def test_jvp_experiment_swept_over_eager_only_and_a_sweep_without_sdpa_are_valid(tmp_path: Path):
    path = _write(
        tmp_path,
        SMALL + "  - {name: exp2.lipschitz, sweep: {attn_implementation: [eager], dtype: [float32, bfloat16]}}\n",
    )
    assert len(build_plan(load_manifest(path)).tasks) == 2 + 4


def test_prompts_may_be_empty_when_no_experiment_reads_them(tmp_path: Path):
    pdf = REPO / "manifests" / "data" / "sample.pdf"
    path = _write(
        tmp_path,
        f"campaign: words\nmodel: {{source: tiny-random-llama}}\nprompts: []\n"
        f"experiments: [{{name: pdf.word_prediction, params: {{pdf_path: {pdf}}}}}]\n",
    )
    assert load_manifest(path).prompts == ()


def test_upstream_runs_that_match_each_task_are_valid(tmp_path: Path):
    """token_flip and heatmap find runs of their target and numerics when both entries share them."""
    path = _write(
        tmp_path,
        SMALL.replace("    id: generate\n", "    id: generate\n    repeats: 2\n")
        + "  - {name: exp4.compare, needs: [generate]}\n"
        + "  - {name: exp6.equal_logits, id: eq, sweep: {dtype: [float32, bfloat16]}}\n"
        + "  - {name: exp6.token_flip, needs: [eq], sweep: {dtype: [float32, bfloat16]}}\n"
        + "  - {name: exp7.heatmap, needs: [eq], numerics: {dtype: bfloat16}, targets: [h100]}\n",
    )
    plan = build_plan(load_manifest(path))
    assert len(plan.tasks_of("exp6.token_flip")) == 4 and len(plan.tasks_of("exp7.heatmap")) == 1


def test_site_profile_target_names_must_be_lower_case(tmp_path: Path):
    """A profile target a manifest could not name is refused in the profile itself."""
    from toolkit.manifest.site import load_site

    profile = tmp_path / "site.yaml"
    profile.write_text("name: s\ntargets:\n  H100: {gres: 'gpu:h100:1'}\n  a100: {}\n")
    loaded, problems = load_site(profile)
    assert loaded is None and problems == [
        f"{profile}:3:3: target name 'H100' must match [a-z0-9][a-z0-9_-]{{0,31}} "
        "(lower case, as manifests name targets)"
    ]
