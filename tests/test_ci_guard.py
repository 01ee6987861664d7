"""The CI guarantee: .ci/run sets CI=true, passes pytest's exit status on (5, no tests, a failure
too) and always prints its wall time; under CI=true a skipped Slurm, container or browser test fails the
run (tests/ci_guard.py), and the Slurm, container and browser test files carry those markers.

Each case is a real pytest (or a real .ci/run with the real Makefile) in a subprocess on a tiny
generated test folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

GUARDED_FILE = """\
import pytest

@pytest.fixture
def cluster():
    pytest.skip("no cluster here")

@pytest.mark.slurm
def test_slurm_skips_in_body():
    pytest.skip("needs root")

@pytest.mark.slurm
def test_slurm_skips_in_fixture(cluster):
    pass

@pytest.mark.container
@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_container_skip_mark(runtime):
    if runtime == "docker":
        pytest.skip("no docker CLI")

@pytest.mark.slurm
@pytest.mark.container
@pytest.mark.skipif(True, reason="not on this machine")
def test_both_marks():
    pass

@pytest.mark.browser
def test_browser_skips():
    pytest.skip("no chromium")

@pytest.mark.slurm
@pytest.mark.xfail(reason="known", strict=True)
def test_slurm_xfail():
    assert False

def test_unmarked_skip_is_allowed():
    pytest.skip("optional")

@pytest.mark.parametrize("kind", ["container"])   # "container" among its keywords, not a mark
def test_unmarked_with_a_container_id(kind):
    pytest.skip("optional too")

@pytest.mark.slurm
def test_slurm_passes():
    pass
"""

SUMMARY = [
    "CI=true: 5 Slurm/container/browser test(s) skipped; under CI they must run:",
    "  test_guarded.py::test_slurm_skips_in_body [slurm]: needs root",
    "  test_guarded.py::test_slurm_skips_in_fixture [slurm]: no cluster here",
    "  test_guarded.py::test_container_skip_mark[docker] [container]: no docker CLI",
    "  test_guarded.py::test_both_marks [slurm,container]: not on this machine",
    "  test_guarded.py::test_browser_skips [browser]: no chromium",
]


def _pytest(folder: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """A real pytest in `folder`, with the guard registered the way tests/conftest.py does."""
    (folder / "conftest.py").write_text('pytest_plugins = ["ci_guard"]\n')
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    slurm: x\n    container: y\n    browser: z\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(TESTS)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _guard_section(out: str) -> list[str]:
    lines = out.splitlines()
    [at] = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ CI guard =+", line)]
    return lines[at + 1 : at + 1 + len(SUMMARY)]


def test_under_ci_a_skipped_slurm_or_container_test_fails_the_run(tmp_path):
    (tmp_path / "test_guarded.py").write_text(GUARDED_FILE)
    result = _pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert _guard_section(result.stdout) == SUMMARY, result.stdout
    assert (
        result.stdout.splitlines()[-1]
        == "2 passed, 7 skipped, 1 xfailed in " + result.stdout.splitlines()[-1].split(" in ")[-1]
    )


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_off_ci_the_same_skips_pass(tmp_path, ci):
    (tmp_path / "test_guarded.py").write_text(GUARDED_FILE)
    result = _pytest(tmp_path, ci)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CI guard" not in result.stdout


def test_under_ci_no_guarded_skip_passes(tmp_path):
    (tmp_path / "test_ok.py").write_text(
        textwrap.dedent("""\
        import pytest

        @pytest.mark.slurm
        def test_slurm():
            pass

        def test_other_skip():
            pytest.skip("optional")
        """)
    )
    result = _pytest(tmp_path, "true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CI guard" not in result.stdout


def test_under_ci_a_failure_keeps_its_status_and_the_summary(tmp_path):
    (tmp_path / "test_guarded.py").write_text(GUARDED_FILE + "\ndef test_fails():\n    assert 1 == 2\n")
    result = _pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert _guard_section(result.stdout) == SUMMARY
    interrupted = _pytest(tmp_path, "true", "-x")  # stopped at the first failure: still 1, listed skips
    assert interrupted.returncode == 1
    assert "test_guarded.py::test_slurm_skips_in_body [slurm]: needs root" in interrupted.stdout


def test_the_guard_is_registered_by_the_suites_conftest(pytestconfig):
    assert (TESTS / "conftest.py").read_text().count('pytest_plugins = ["ci_guard"]') == 1
    assert pytestconfig.pluginmanager.get_plugin("toolkit-ci-guard") is not None


def test_the_slurm_container_and_browser_files_carry_their_markers():
    """Every test of the Slurm, container and browser suites is marked: deselecting the markers leaves none."""
    files = [
        "tests/test_slurm.py",
        "tests/test_container_build.py",
        "tests/test_container_campaign.py",
        "tests/test_report_browser.py",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-m",
            "not slurm and not container and not browser",
            *files,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 5, result.stdout + result.stderr
    assert re.search(r"^no tests collected \(\d+ deselected\)", result.stdout, re.M), result.stdout


# --- .ci/run, with the real Makefile, on a tiny test folder ------------------------------------------

WALL = re.compile(r"CI wall time: \d+m \d+s \(exit (\d+)\)")


def _ci_run(
    tmp_path: Path, tests: dict[str, str], *, keep_setup: bool = True, lint_status: int = 0
) -> subprocess.CompletedProcess[str]:
    """A copy of .ci/run and the Makefile in tmp_path, the venv's bin linked (make sees it installed).

    The copy's `lint` recipe is replaced by one that exits `lint_status` (the real one lints the
    project's own tree, which this tiny folder is not); make warns that it overrides the recipe."""
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    with (tmp_path / "Makefile").open("a") as makefile:
        makefile.write(f"\nlint:\n\t@echo lint stand-in; exit {lint_status}\n")
    for name in ["setup.cfg", "pyproject.toml", "constraints.txt"] if keep_setup else []:
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (0, 0))  # older than the venv's stamp: make installs nothing
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent)
    (venv / ".installed").touch()
    (tmp_path / "tests").mkdir()
    for name, text in tests.items():
        (tmp_path / "tests" / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "MAKEFLAGS", "MAKELEVEL")}
    env["VENV"] = str(venv)
    return subprocess.run(
        [str(tmp_path / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_ci_run_sets_ci_itself_and_passes(tmp_path):
    result = _ci_run(
        tmp_path,
        {
            "test_env.py": """\
        import os

        def test_ci_is_set():
            assert os.environ["CI"] == "true"
        """
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert WALL.fullmatch(result.stdout.splitlines()[-1]).group(1) == "0"


def test_ci_run_exits_with_pytests_status_and_prints_the_wall_time_on_failure(tmp_path):
    result = _ci_run(
        tmp_path,
        {
            "test_fail.py": """\
        import pytest

        def test_usage():
            pytest.exit("stop", returncode=4)
        """
        },
    )
    assert result.returncode == 4, result.stdout + result.stderr  # make alone would say 2
    assert WALL.fullmatch(result.stdout.splitlines()[-1]).group(1) == "4"


def test_ci_run_fails_when_no_test_is_collected(tmp_path):
    result = _ci_run(tmp_path, {"helpers.py": "X = 1\n"})
    assert result.returncode == 5, result.stdout + result.stderr
    assert (
        result.stderr.splitlines()[-1]
        == ".ci/run: pytest collected no tests (exit 5): a CI run that tests nothing fails"
    )
    assert WALL.fullmatch(result.stdout.splitlines()[-1]).group(1) == "5"


def test_ci_run_reports_a_failure_before_pytest(tmp_path):
    result = _ci_run(tmp_path, {"test_env.py": "def test_x():\n    pass\n"}, keep_setup=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == ".ci/run: make test failed (exit 2) before pytest ran"
    assert WALL.fullmatch(result.stdout.splitlines()[-1]).group(1) == "2"


def test_ci_run_fails_on_lint_findings_and_still_runs_the_tests(tmp_path):
    result = _ci_run(tmp_path, {"test_ok.py": "def test_ok():\n    pass\n"}, lint_status=3)
    assert result.returncode == 1
    assert "lint stand-in" in result.stdout and "1 passed" in result.stdout
    assert ".ci/run: make lint failed (exit 2): run make lint and fix what it says" in result.stderr
    assert WALL.fullmatch(result.stdout.splitlines()[-1]).group(1) == "1"
