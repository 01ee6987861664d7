"""Site profiles: found by name in $TOOLKIT_SITES and in a non-editable install (package data),
`--site PATH` from the working directory, bad profiles refused with exact lines (exit 2), the
campaign section for campaign-level tasks and the gather job's resources, shown by `toolkit plan`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO, run_cli

MANIFEST = """\
campaign: sites
output: {output}
model: {{source: tiny-random-llama}}
prompts: ["a"]
targets: [a100]
experiments:
  - name: exp4.generate
    id: generate
    repeats: 2
  - name: exp4.compare
    id: compare
    needs: [generate]
"""

PROFILE = """\
name: {name}
defaults: {{partition: {partition}}}
targets:
  a100: {{constraint: a100, gres: "gpu:a100:1"}}
"""


def _manifest(folder: Path, extra: str = "", name: str = "m.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(MANIFEST.format(output=folder / "campaigns") + extra)
    return path


def _array_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"  array {name}:"))


def test_a_profile_in_toolkit_sites_is_found_by_name(tmp_path):
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "mysite.yaml").write_text(PROFILE.format(name="mysite", partition="fromenv"))
    manifest = _manifest(tmp_path / "work")
    result = run_cli("plan", str(manifest), "--site", "mysite", env={"TOOLKIT_SITES": str(sites)}, timeout=120)
    assert result.code == 0, result.err
    assert "; site mysite; " in result.out.splitlines()[0]
    assert _array_line(result.out, "s1-a100").endswith(
        "--partition=fromenv --constraint=a100 --gres=gpu:a100:1 --time=60 --cpus-per-task=4 --mem=16384M"
    )
    result = run_cli("plan", str(manifest), "--site", "mysitee", env={"TOOLKIT_SITES": str(sites)}, timeout=120)
    assert (result.code, result.err) == (
        2,
        f"error: {manifest}:1:1: site: unknown site profile 'mysitee'; did you "
        "mean 'mysite'? known: default, mysite, testcluster; or give a path to "
        "a .yaml file\n",
    )


def test_site_path_is_resolved_from_the_working_directory(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    manifest = _manifest(there)
    here.mkdir()
    (here / "prof.yaml").write_text(PROFILE.format(name="cwd", partition="fromcwd"))
    (there / "prof.yaml").write_text(PROFILE.format(name="beside", partition="beside"))
    result = run_cli("plan", str(manifest), "--site", "prof.yaml", cwd=here, timeout=120)
    assert result.code == 0, result.err
    assert "; site cwd; " in result.out.splitlines()[0]
    assert "--partition=fromcwd" in _array_line(result.out, "s1-a100")
    # the manifest's own `site:` stays relative to the manifest's folder
    beside = _manifest(there, "site: prof.yaml\n", name="beside.yaml")
    result = run_cli("plan", str(beside), cwd=here, timeout=120)
    assert result.code == 0 and "; site beside; " in result.out.splitlines()[0], result.err
    # a --site path that is not there is named as given
    result = run_cli("validate", str(manifest), "--site", "nosuch.yaml", cwd=here, timeout=120)
    assert (result.code, result.err) == (
        2,
        f"error: {manifest}:1:1: site: unknown site profile "
        f"'{here / 'nosuch.yaml'}'; known: default, testcluster; or give a "
        "path to a .yaml file\n",
    )


BAD_PROFILES = {
    "top-level typo": (
        "name: x\ntarget:\n  a100: {}\n",
        [
            "{p}:2:1: unknown key 'target'; did you mean 'targets'? valid: name, description, defaults, "
            "campaign, gather, targets",
            "{p}:1:1: targets must be a non-empty mapping",
        ],
    ),
    "option typo": (
        "name: x\ndefaults: {partiton: gpu}\ntargets:\n  a100: {}\n",
        [
            "{p}:2:12: unknown sbatch option 'partiton'; did you mean 'partition'? valid: partition, "
            "account, qos, constraint, gres, gpus, extra"
        ],
    ),
    "newline in a value": (
        'name: x\ntargets:\n  a100: {constraint: "a100\\nh100"}\n',
        ["{p}:3:22: constraint must be a non-empty single-line string"],
    ),
    "NUL in a value": (
        'name: x\ndefaults: {account: "proj\\0x"}\ntargets:\n  a100: {}\n',
        ["{p}:2:21: account must be a non-empty single-line string"],
    ),
    "extra not a long option": (
        'name: x\ntargets:\n  a100: {extra: ["--exclusive", "-x node13", "exclusive"]}\n',
        [
            "{p}:3:17: extra line '-x node13' must be a long sbatch option like '--exclude=node13' or '--exclusive'",
            "{p}:3:17: extra line 'exclusive' must be a long sbatch option like '--exclude=node13' or '--exclusive'",
        ],
    ),
    "extra with a newline": (
        'name: x\ntargets:\n  a100: {extra: ["--exclude=a\\nb"]}\n',
        [
            "{p}:3:17: extra line '--exclude=a\\nb' must be a long sbatch option like "
            "'--exclude=node13' or '--exclusive'"
        ],
    ),
    "GPU in the gather section": (
        'name: x\ngather: {gres: "gpu:a100:1", time_min: 0}\ntargets:\n  a100: {}\n',
        [
            "{p}:2:16: gather jobs get no GPU; remove gres (GPUs are requested per target)",
            "{p}:2:40: time_min must be an integer >= 1, got 0",
        ],
    ),
    "gather resources outside gather": (
        "name: x\ncampaign: {mem_gb: 8}\ntargets:\n  a100: {}\n",
        ["{p}:2:12: unknown sbatch option 'mem_gb'; valid: partition, account, qos, constraint, gres, gpus, extra"],
    ),
}


def test_bad_site_profiles_are_refused_with_exact_lines(tmp_path):
    manifest = _manifest(tmp_path)
    for case, (text, expected) in BAD_PROFILES.items():
        profile = tmp_path / "bad.yaml"
        profile.write_text(text)
        result = run_cli("validate", str(manifest), "--site", str(profile), timeout=120)
        assert result.code == 2, case
        assert result.err.splitlines() == [f"error: {line.format(p=profile)}" for line in expected], case
        assert not (tmp_path / "campaigns").exists()


def test_campaign_level_tasks_and_gather_jobs_take_their_profile_sections(tmp_path):
    manifest = _manifest(tmp_path)
    result = run_cli("plan", str(manifest), "--site", "default", timeout=120)
    assert result.code == 0, result.err
    # compare runs once per campaign on no GPU: the default profile's campaign section (cpu), not `gpu`
    assert _array_line(result.out, "s2-any").endswith("--partition=cpu --time=60 --cpus-per-task=4 --mem=16384M")
    assert (
        "  gather 1: one CPU job after the arrays of stage 1  --partition=cpu --time=30 --cpus-per-task=1 "
        "--mem=4G" in result.out.splitlines()
    )
    profile = tmp_path / "mine.yaml"
    profile.write_text(
        textwrap.dedent("""\
        name: mine
        defaults: {partition: gpu, account: proj}
        campaign: {partition: short, qos: quick}
        gather: {partition: tiny, time_min: 10, cpus: 2, mem_gb: 2.5}
        targets:
          a100: {gres: "gpu:a100:1"}
        """)
    )
    result = run_cli("plan", str(manifest), "--site", str(profile), timeout=120)
    assert result.code == 0, result.err
    assert _array_line(result.out, "s1-a100").endswith(
        "--partition=gpu --account=proj --gres=gpu:a100:1 --time=60 --cpus-per-task=4 --mem=16384M"
    )
    assert _array_line(result.out, "s2-any").endswith(
        "--partition=short --account=proj --qos=quick --time=60 --cpus-per-task=4 --mem=16384M"
    )
    assert [line for line in result.out.splitlines() if line.startswith("  gather ")] == [
        f"  gather {i}: one CPU job after the arrays of stage {i}  --partition=tiny --account=proj --time=10 "
        "--cpus-per-task=2 --mem=2560M"
        for i in (1, 2)
    ]
    # without a campaign section, campaign-level tasks take the gather section's options
    profile.write_text(profile.read_text().replace("campaign: {partition: short, qos: quick}\n", ""))
    result = run_cli("plan", str(manifest), "--site", str(profile), timeout=120)
    assert _array_line(result.out, "s2-any").endswith(
        "--partition=tiny --account=proj --time=60 --cpus-per-task=4 --mem=16384M"
    ), result.err


def test_a_non_editable_install_finds_the_shipped_profiles(tmp_path):
    """`pip install --no-deps --no-build-isolation --target` of a copy of the source (a real
    wheel build, as a user's `pip install .` does), then a manifest naming `site: testcluster`
    validated with that copy from a folder outside the checkout."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "toolkit", source / "toolkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    target = tmp_path / "installed"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert sorted(p.name for p in (target / "toolkit" / "sites").iterdir()) == ["default.yaml", "testcluster.yaml"]
    work = tmp_path / "work"
    _manifest(work, "site: testcluster\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import toolkit, sys; print(toolkit.__file__); "
            "from toolkit.cli import main; sys.argv = ['toolkit', 'validate', 'm.yaml']; main()",
        ],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        str(target / "toolkit" / "__init__.py"),
        "m.yaml: valid — campaign sites, 3 task(s) in 2 stage(s)",
    ]
