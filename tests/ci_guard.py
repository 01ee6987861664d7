"""pytest plugin: under CI (CI=true, which .ci/run sets), a skipped Slurm, container or browser
test fails the run.

The Slurm, container and browser suites need root, the test cluster, podman and Chromium; off CI
they skip with the reason.  Under CI they are mandatory: every test marked `slurm`, `container` or
`browser` (setup.cfg) that
ends skipped (pytest.skip in the test or in a fixture, a skip/skipif mark, importorskip) is listed
at the end of the run, and the session's exit status becomes 1 (tests failed) where it was 0.
An expected failure (xfail) is not a skip.  Registered by tests/conftest.py (pytest_plugins).
"""

from __future__ import annotations

import os

import pytest

GUARDED = ("slurm", "container", "browser")


class CIGuard:
    def __init__(self) -> None:
        self.marked: dict[str, list[str]] = {}  # nodeid -> its guarded markers
        self.skipped: list[tuple[str, str, str]] = []  # (nodeid, marks, reason)

    @staticmethod
    def active() -> bool:
        return os.environ.get("CI") == "true"

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            names = {mark.name for mark in item.iter_markers()}
            marks = [name for name in GUARDED if name in names]
            if marks:
                self.marked[item.nodeid] = marks

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        marks = self.marked.get(report.nodeid)
        if not marks:
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        self.skipped.append((report.nodeid, ",".join(marks), reason.removeprefix("Skipped: ")))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.active() and self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.active() or not self.skipped:
            return
        terminalreporter.section("CI guard", sep="=", red=True, bold=True)
        terminalreporter.line(
            f"CI=true: {len(self.skipped)} Slurm/container/browser test(s) skipped; under CI they must run:", red=True
        )
        for nodeid, marks, reason in self.skipped:
            terminalreporter.line(f"  {nodeid} [{marks}]: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CIGuard(), "toolkit-ci-guard")
