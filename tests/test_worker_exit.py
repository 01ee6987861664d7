"""toolkit.worker_exit: a submitit job that succeeded exits 0 at once, output kept; any other
outcome exits as Python does.  Real submitit local jobs, plus the check on a result file."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest
import submitit

from toolkit import worker_exit

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job process need not import this file


def _job(fail: bool, marker: str) -> str:
    import atexit

    # Exit handlers run last-registered first: one registered before the check runs after it (so
    # not at all when the check ends the process), one registered after it runs before it.
    atexit.register(lambda: Path(marker + ".early").write_text("early handler ran"))
    import toolkit.worker  # noqa: F401  (installs the exit check, as in every toolkit job)

    atexit.register(lambda: Path(marker).write_text("late handler ran"))
    print("line without flush", end="")
    if fail:
        raise RuntimeError("this task failed")
    return "ok"


def _run(tmp_path: Path, fail: bool) -> tuple[submitit.local.local.LocalJob, Path]:
    marker = tmp_path / "marker.txt"
    executor = submitit.LocalExecutor(tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    job = executor.submit(_job, fail, str(marker))
    job.wait()
    return job, marker


def test_a_job_that_succeeded_ends_in_the_check_with_its_output_and_later_handlers(tmp_path: Path) -> None:
    job, marker = _run(tmp_path, fail=False)
    assert job.result() == "ok"
    assert job.stdout() is not None and "line without flush" in job.stdout()
    assert "Exiting after successful completion" in (job.stderr() or "") + (job.stdout() or "")
    assert marker.read_text() == "late handler ran"
    assert not Path(f"{marker}.early").exists()  # the process ended in the check: no teardown after it


def test_a_job_that_failed_keeps_its_failure(tmp_path: Path) -> None:
    job, marker = _run(tmp_path, fail=True)
    with pytest.raises(submitit.core.utils.FailedJobError, match="this task failed"):
        job.result()
    assert marker.read_text() == "late handler ran"
    assert Path(f"{marker}.early").read_text() == "early handler ran"  # Python's own exit, all of it


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [(("success", ["a"]), True), (("error", "Traceback ..."), False), ("success", False), ((), False)],
)
def test_only_a_success_result_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: object, expected: bool
) -> None:
    result = tmp_path / "1_result.pkl"
    result.write_bytes(pickle.dumps(outcome))
    paths = SimpleNamespace(result_pickle=result)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(paths=paths))
    assert worker_exit._succeeded() is expected


def test_no_result_file_or_no_job_environment_is_not_success(tmp_path: Path) -> None:
    assert worker_exit._succeeded() is False  # pytest is not a submitit job


def test_outside_the_job_runner_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_exit.os, "_exit", lambda code: pytest.fail(f"os._exit({code}) outside a job"))
    monkeypatch.setattr(worker_exit, "_succeeded", lambda: True)
    worker_exit._exit_if_succeeded()  # __main__ is pytest's, not submitit.core._submit
