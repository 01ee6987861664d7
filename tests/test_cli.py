"""The thin CLI: help, the registry listing, exit codes for bad arguments."""

from conftest import run_cli


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.code == 0
    for command in ("validate", "plan", "submit", "experiments", "status", "gather", "show", "plot", "cancel"):
        assert f"  {command}" in result.out


def test_experiments_lists_and_describes():
    listing = run_cli("experiments")
    assert listing.code == 0
    from toolkit.experiments import names

    assert [line.split()[0] for line in listing.out.splitlines()] == names()
    assert {"exp4.compare", "exp4.generate"} <= set(names())
    described = run_cli("experiments", "exp4.generate")
    assert described.code == 0
    assert "max_new_tokens     int" in described.out and "default 64" in described.out
    assert "prompts/<k>/logits_hash" in described.out and "reads: nothing upstream" in described.out
    assert "reads: exp4.generate" in run_cli("experiments", "exp4.compare").out


def test_unknown_experiment_is_bad_input_with_suggestion():
    result = run_cli("experiments", "exp4.generat")
    assert result.code == 2 and result.out == ""
    assert result.err.strip().splitlines() == [
        "error: unknown experiment 'exp4.generat'; did you mean 'exp4.generate'? known experiments: "
        + ", ".join(sorted(__import__("toolkit.experiments", fromlist=["names"]).names()))
    ]


def test_missing_campaign_folder_and_store_are_bad_input(tmp_path):
    status = run_cli("status", str(tmp_path / "nope"))
    assert (status.code, status.err) == (
        2,
        f"error: {tmp_path / 'nope'}: no such campaign folder; give the folder "
        "toolkit submit made (<output>/<campaign>)\n",
    )
    show = run_cli("show", str(tmp_path / "store.h5"))
    assert (show.code, show.err) == (
        2,
        f"error: {tmp_path / 'store.h5'}: no such store; give a campaign folder or its store.h5\n",
    )
    (tmp_path / "plan.json").write_text("{}")
    cancel = run_cli("cancel", str(tmp_path))
    assert (cancel.code, cancel.err) == (
        2,
        f"error: {tmp_path}: no Slurm submission recorded (slurm.json); nothing to cancel\n",
    )


def test_local_executor_refuses_no_wait(tiny_manifest, tmp_path):
    result = run_cli("submit", str(tiny_manifest()), "--executor", "local", "--no-wait")
    assert result.code == 2
    assert result.err.strip() == "error: --no-wait needs the slurm executor: local jobs run under this command"
    assert not (tmp_path / "campaigns").exists()


def test_bad_option_value_exits_2():
    result = run_cli("submit", "x.yaml", "--executor", "cloud")
    assert result.code == 2 and "error: " in result.err and "cloud" in result.err


def test_validate_imports_no_heavy_module(tmp_path):
    """What keeps validate instant on a login node, checked without a clock: a malformed manifest
    is refused without importing torch, transformers, h5py or submitit (timings: benchmarks/bench_cli.py)."""
    import subprocess
    import sys

    from conftest import REPO

    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "campaign: bad\nmodel: {source: tiny-random-llama}\nexperiments:\n"
        "  - name: exp4.generate\n    params: {max_new_tokens: -3}\n"
    )
    probe = (
        "import sys, runpy\nsys.argv = ['toolkit', 'validate', sys.argv[1]]\ntry:\n"
        "    runpy.run_module('toolkit.cli', run_name='__main__')\nexcept SystemExit as end:\n"
        "    code = end.code\nheavy = ('torch', 'transformers', 'h5py', 'submitit')\n"
        "print(code, [m for m in heavy if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(manifest)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.splitlines()[-1] == "2 []", proc.stdout + proc.stderr
