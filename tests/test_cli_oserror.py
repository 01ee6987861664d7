"""The CLI's last line of defence: an OSError the code did not foresee is one line and exit 1."""

from __future__ import annotations

import errno

import pytest

from toolkit import cli


def test_an_unforeseen_os_error_is_one_line_and_exit_1(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/campaigns/x/store.h5")

    monkeypatch.setattr(cli.cli, "main", refuse)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: /campaigns/x/store.h5: No space left on device; fix that and rerun the same command\n"
    )
