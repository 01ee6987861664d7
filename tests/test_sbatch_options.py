"""The sbatch options each site profile gives an array or a gather job, and the exact `#SBATCH`
lines of the script submitit writes for one array.  Pure: no Slurm needed (submitit's check that
`srun` exists is bypassed)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from conftest import REPO

from toolkit.launch.sites import sbatch_options
from toolkit.manifest import Resources, load_manifest
from toolkit.manifest.site import load_site
from toolkit.plan import ANY_TARGET, build_plan

RESOURCES = Resources(time_min=30, cpus=4, mem_gb=7.5, array_parallelism=1)


def _site(name: str):
    site, problems = load_site(REPO / "slurm" / "sites" / f"{name}.yaml")
    assert not problems, problems
    return site


EXPECTED_LINES = {
    ("default", "a100", False): """\
        #SBATCH --partition=gpu
        #SBATCH --constraint=a100
        #SBATCH --gres=gpu:a100:1
        #SBATCH --time=30
        #SBATCH --cpus-per-task=4
        #SBATCH --mem=7680M""",
    ("default", "cpu", False): """\
        #SBATCH --partition=cpu
        #SBATCH --time=30
        #SBATCH --cpus-per-task=4
        #SBATCH --mem=7680M""",
    ("default", ANY_TARGET, False): """\
        #SBATCH --partition=cpu
        #SBATCH --time=30
        #SBATCH --cpus-per-task=4
        #SBATCH --mem=7680M""",
    ("default", ANY_TARGET, True): """\
        #SBATCH --partition=cpu
        #SBATCH --time=30
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=4G""",
    ("testcluster", "h100", False): """\
        #SBATCH --partition=batch
        #SBATCH --constraint=h100
        #SBATCH --gres=gpu:h100:1
        #SBATCH --time=30
        #SBATCH --cpus-per-task=4
        #SBATCH --mem=7680M""",
    ("testcluster", ANY_TARGET, False): """\
        #SBATCH --partition=batch
        #SBATCH --time=30
        #SBATCH --cpus-per-task=4
        #SBATCH --mem=7680M""",
    ("testcluster", ANY_TARGET, True): """\
        #SBATCH --partition=batch
        #SBATCH --time=30
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=4G""",
}


def sbatch_lines(options: dict[str, Any]) -> list[str]:
    """The options as `#SBATCH` lines, in a stable order (how a reader checks them against a site's docs)."""
    lines = [f"#SBATCH --{k}={v}" for k, v in options.items() if k != "extra"]
    return lines + [f"#SBATCH {line}" for line in options.get("extra", [])]


@pytest.mark.parametrize("site_name,target,gather", sorted(EXPECTED_LINES))
def test_sbatch_lines_per_site_profile(site_name, target, gather):
    options = sbatch_options(_site(site_name), target, RESOURCES, gather=gather)
    assert sbatch_lines(options) == textwrap.dedent(EXPECTED_LINES[(site_name, target, gather)]).splitlines()


def test_sbatch_options_gpu_target_and_gather_dicts():
    site = _site("testcluster")
    assert sbatch_options(site, "a100", RESOURCES) == {
        "partition": "batch",
        "constraint": "a100",
        "gres": "gpu:a100:1",
        "time": 30,
        "cpus-per-task": 4,
        "mem": "7680M",
        "extra": [],
    }
    # the gather job never asks for a GPU, whatever the target options say
    assert sbatch_options(site, "a100", RESOURCES, gather=True) == {
        "partition": "batch",
        "time": 30,
        "cpus-per-task": 1,
        "mem": "4G",
        "extra": [],
    }


def test_site_extra_lines_and_gpus_override(tmp_path):
    path = tmp_path / "mysite.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: mysite
        defaults: {partition: gpu, account: proj, extra: ["--reservation=maint"]}
        gather: {partition: cpu, qos: short}
        targets:
          h100: {partition: hopper, gpus: 1, extra: ["--exclude=node13", "--exclusive"]}
        """)
    )
    site, problems = load_site(path)
    assert not problems, problems
    assert sbatch_lines(sbatch_options(site, "h100", Resources(time_min=5, cpus=2, mem_gb=1))) == [
        "#SBATCH --partition=hopper",
        "#SBATCH --account=proj",
        "#SBATCH --gpus=1",
        "#SBATCH --time=5",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=1024M",
        "#SBATCH --reservation=maint",
        "#SBATCH --exclude=node13",
        "#SBATCH --exclusive",
    ]
    assert sbatch_lines(sbatch_options(site, ANY_TARGET, Resources(), gather=True)) == [
        "#SBATCH --partition=cpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=short",
        "#SBATCH --time=30",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=4G",
        "#SBATCH --reservation=maint",
    ]


# ---- the script submitit writes (submitit 1.5.4: SlurmExecutor._make_submission_file_text)

MANIFEST = """\
campaign: probe
output: {output}
site: {site}
model: {{source: tiny-random-llama}}
prompts: ["a"]
targets: [a100, h100]
experiments:
  - name: exp4.generate
    id: generate
    repeats: 3
    resources: {resources}
  - name: exp4.compare
    id: compare
    needs: [generate]
"""


@pytest.fixture
def make_executor(tmp_path, monkeypatch):
    """_executor(...) for the plan of MANIFEST; returns (function, jobs folder)."""
    submitit = pytest.importorskip("submitit")
    from toolkit.launch.slurm import _executor

    assert hasattr(submitit.SlurmExecutor, "_make_submission_file_text")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun needed
    folder = tmp_path / "jobs"

    def make(site: str, resources: str, stage: int, target: str | None, gather: bool, after: list[str], name: str):
        path = tmp_path / "m.yaml"
        path.write_text(MANIFEST.format(output=tmp_path / "out", site=site, resources=resources))
        plan = build_plan(load_manifest(path))
        group = next(g for g in plan.stages[stage - 1].groups if target is None or g.target == target)
        executor = _executor(
            submitit, folder, plan, "any" if gather else group.target, None if gather else group.resources, name, after
        )
        return executor, len(group.task_ids)

    return make, folder


def _sbatch(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_submitit_array_script_testcluster(make_executor):
    make, folder = make_executor
    executor, n = make(
        "testcluster",
        "{time_min: 15, cpus: 2, mem_gb: 1.5, array_parallelism: 1}",
        1,
        "a100",
        False,
        ["1", "2"],
        "probe-s1-a100",
    )
    assert n == 3
    executor.parameters["map_count"] = n  # what submitit's map_array sets for an array of n
    text = executor._make_submission_file_text(command="python -m x", uid="u")
    assert _sbatch(text) == [
        "#SBATCH --array=0-2%1",
        "#SBATCH --constraint=a100",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --dependency=afterok:1:2",
        f"#SBATCH --error={folder}/%A_%a_0_log.err",
        "#SBATCH --gres=gpu:a100:1",
        "#SBATCH --job-name=probe-s1-a100",
        "#SBATCH --mem=1536M",
        "#SBATCH --nodes=1",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={folder}/%A_%a_0_log.out",
        "#SBATCH --partition=batch",
        "#SBATCH --signal=USR2@30",
        "#SBATCH --time=15",
        "#SBATCH --wckey=submitit",
    ]
    assert text.rstrip().endswith("python -m x")


def test_submitit_array_without_parallelism_is_not_throttled(make_executor):
    make, folder = make_executor
    executor, n = make("default", "{time_min: 20, cpus: 3, mem_gb: 2}", 1, "h100", False, [], "probe-s1-h100")
    executor.parameters["map_count"] = 300  # submitit alone would write %256
    lines = _sbatch(executor._make_submission_file_text(command="python -m x", uid="u"))
    assert "#SBATCH --array=0-299%300" in lines
    assert not any(line.startswith("#SBATCH --dependency") for line in lines)
    assert [line for line in lines if "log" not in line] == [
        "#SBATCH --array=0-299%300",
        "#SBATCH --constraint=h100",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --gres=gpu:h100:1",
        "#SBATCH --job-name=probe-s1-h100",
        "#SBATCH --mem=2048M",
        "#SBATCH --nodes=1",
        "#SBATCH --open-mode=append",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@30",
        "#SBATCH --time=20",
        "#SBATCH --wckey=submitit",
    ]


def test_submitit_gather_and_any_target_scripts(make_executor):
    make, folder = make_executor
    gather, _ = make("default", "{time_min: 15}", 1, None, True, ["11", "12"], "probe-gather1")
    assert _sbatch(gather._make_submission_file_text(command="python -m x", uid="u")) == [
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --dependency=afterok:11:12",
        f"#SBATCH --error={folder}/%j_0_log.err",
        "#SBATCH --job-name=probe-gather1",
        "#SBATCH --mem=4G",
        "#SBATCH --nodes=1",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={folder}/%j_0_log.out",
        "#SBATCH --partition=cpu",
        "#SBATCH --signal=USR2@30",
        "#SBATCH --time=30",
        "#SBATCH --wckey=submitit",
    ]
    compare, n = make("default", "{time_min: 15}", 2, None, False, ["13"], "probe-s2-any")
    assert n == 1  # one compare task: submitted as a plain job, not an array
    lines = _sbatch(compare._make_submission_file_text(command="python -m x", uid="u"))
    # a campaign-level task takes the profile's campaign section: the CPU partition, no GPU
    assert "#SBATCH --dependency=afterok:13" in lines and "#SBATCH --partition=cpu" in lines
    assert not any(line.startswith(("#SBATCH --gres", "#SBATCH --constraint", "#SBATCH --array")) for line in lines)
    assert "#SBATCH --time=60" in lines and "#SBATCH --mem=16384M" in lines  # compare keeps the defaults


def test_submitit_script_extra_lines(make_executor, tmp_path):
    site = tmp_path / "extra.yaml"
    site.write_text(
        "name: extra\ndefaults: {partition: gpu}\ntargets:\n"
        '  a100: {gres: "gpu:a100:1", extra: ["--exclude=node13", "--exclusive"]}\n'
        '  h100: {gres: "gpu:h100:1"}\n'
    )
    make, _ = make_executor
    executor, _ = make(str(site), "{time_min: 15}", 1, "a100", False, [], "x")
    lines = _sbatch(executor._make_submission_file_text(command="python -m x", uid="u"))
    assert "#SBATCH --exclude=node13" in lines and "#SBATCH --exclusive" in lines


def test_short_option_extra_line_is_rejected_at_validation(tmp_path):
    site = tmp_path / "short.yaml"
    site.write_text('name: short\ndefaults: {partition: gpu}\ntargets:\n  a100: {extra: ["-x node13"]}\n  h100: {}\n')
    profile, problems = load_site(site)
    assert profile is None
    assert problems == [
        f"{site}:4:17: extra line '-x node13' must be a long sbatch option like '--exclude=node13' or '--exclusive'"
    ]


def test_manifest_gpu_count_overrides_the_site_count_and_zero_drops_the_request():
    site, _ = load_site(REPO / "slurm" / "sites" / "testcluster.yaml")
    assert sbatch_options(site, "a100", Resources(gpus=2))["gres"] == "gpu:a100:2"
    assert "gres" not in sbatch_options(site, "a100", Resources(gpus=0))
