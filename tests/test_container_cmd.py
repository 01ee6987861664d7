"""The command lines that run the worker inside a container (toolkit.launch.container).

Exact argv for podman, docker and apptainer on CPU and GPU targets; the variables passed; hostile
paths that must come out quoted (checked by running the command through a shell and through
submitit's own split, with a fake runtime that records what it receives); the errors.  No real
container runtime is needed (tests/test_container_build.py runs the real ones).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toolkit.errors import UsageError
from toolkit.launch import container as c
from toolkit.launch.container import ContainerError, check_runtime, container_argv, container_python, image_digest

IMAGE = "localhost/toolkit:0.1.0"
DIGEST = "sha256:" + "ab" * 32
CAMPAIGN = "/data/campaigns/gpu-divergence"
JOBS = CAMPAIGN + "/jobs/20260101-000000-000000"
PODMAN_PASSED = [
    "-e",
    "SLURM_*",
    "-e",
    "SLURMD_*",
    "-e",
    "SUBMITIT_*",
    "-e",
    "CUDA_VISIBLE_DEVICES",
    "-e",
    "TOOLKIT_FAULT",
    "-e",
    "OMP_NUM_THREADS",
    "-e",
    "MKL_NUM_THREADS",
]
HOSTILE = [
    "/tmp/with space/campaign",
    "/tmp/quote'single/c",
    '/tmp/quote"double/c',
    "/tmp/semi;colon/c",
    "/tmp/$(touch PWNED)/c",
    "/tmp/`touch PWNED`/c",
    "/tmp/dollar$HOME/c",
    "/tmp/glob*?[x]/c",
    "/tmp/amp&&pipe|gt>lt</c",
    "/tmp/-rf/--privileged",
    "/tmp/tab\there/c",
    "/tmp/unicodé ☃/c",
]


# --- exact command lines --------------------------------------------------------------------------


def test_podman_cpu_exact():
    argv = container_argv("podman", IMAGE, binds=[CAMPAIGN, JOBS], digest=DIGEST)
    assert argv == [
        "podman",
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{CAMPAIGN}:{CAMPAIGN}",
        "--workdir",
        CAMPAIGN,
        *PODMAN_PASSED,
        "-e",
        f"TOOLKIT_IMAGE={IMAGE}",
        "-e",
        f"TOOLKIT_IMAGE_DIGEST={DIGEST}",
        DIGEST,
        "python",
    ]


def test_podman_gpu_exact():
    argv = container_argv("podman", IMAGE, binds=[CAMPAIGN], gpu=True, digest=DIGEST)
    assert argv == [
        "podman",
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{CAMPAIGN}:{CAMPAIGN}",
        "--workdir",
        CAMPAIGN,
        *PODMAN_PASSED,
        "-e",
        f"TOOLKIT_IMAGE={IMAGE}",
        "-e",
        f"TOOLKIT_IMAGE_DIGEST={DIGEST}",
        "--device",
        "nvidia.com/gpu=all",
        DIGEST,
        "python",
    ]
    assert "--gpus" not in argv and "--nv" not in argv


def test_docker_cpu_and_gpu_exact():
    cpu = container_argv("docker", IMAGE, binds=[CAMPAIGN, JOBS], digest=DIGEST, user="1000:1000")
    passed = [x for name in (*c.SLURM_NAMES, *c.SUBMITIT_NAMES, *c.OTHER_NAMES) for x in ("-e", name)]
    assert cpu == [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "1000:1000",
        "-v",
        f"{CAMPAIGN}:{CAMPAIGN}",
        "--workdir",
        CAMPAIGN,
        *passed,
        "-e",
        f"TOOLKIT_IMAGE={IMAGE}",
        "-e",
        f"TOOLKIT_IMAGE_DIGEST={DIGEST}",
        DIGEST,
        "python",
    ]
    gpu = container_argv("docker", IMAGE, binds=[CAMPAIGN], digest=DIGEST, user="1000:1000", gpu=True)
    assert gpu[-4:] == ["--gpus", "all", DIGEST, "python"]
    assert "nvidia.com/gpu=all" not in gpu
    # docker -e takes no pattern: each variable submitit and the provenance read is named
    for name in (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_PROCID",
        "SLURMD_NODENAME",
        "SUBMITIT_EXECUTOR",
        "SUBMITIT_LOCAL_JOB_ID",
        "CUDA_VISIBLE_DEVICES",
    ):
        assert ["-e", name] in [cpu[i : i + 2] for i in range(len(cpu) - 1)]


def test_docker_runs_as_the_current_user_by_default():
    argv = container_argv("docker", IMAGE, binds=[CAMPAIGN])
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert "--user" not in container_argv("podman", IMAGE, binds=[CAMPAIGN])


def test_apptainer_cpu_and_gpu_exact(tmp_path):
    sif = str(tmp_path / "toolkit.sif")
    argv = container_argv("apptainer", sif, binds=[CAMPAIGN, JOBS], digest=DIGEST)
    script = argv[argv.index("-c") + 1]
    assert argv == [
        "env",
        f"APPTAINERENV_TOOLKIT_IMAGE={sif}",
        f"APPTAINERENV_TOOLKIT_IMAGE_DIGEST={DIGEST}",
        "/bin/sh",
        "-c",
        script,
        "toolkit-apptainer",
        "apptainer",
        "exec",
        "--cleanenv",
        "--bind",
        f"{CAMPAIGN}:{CAMPAIGN}",
        "--pwd",
        CAMPAIGN,
        sif,
        "python",
    ]
    gpu = container_argv("apptainer", sif, binds=[CAMPAIGN], gpu=True)
    assert gpu[gpu.index("exec") : gpu.index("--bind")] == ["exec", "--cleanenv", "--nv"]
    assert "--network" not in gpu and "--nv" not in argv


def test_apptainer_relative_sif_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = container_argv("apptainer", "toolkit.sif", binds=[CAMPAIGN])
    assert argv[-2] == str(tmp_path / "toolkit.sif")
    assert f"APPTAINERENV_TOOLKIT_IMAGE={tmp_path / 'toolkit.sif'}" in argv


def test_network_and_tag_options():
    argv = container_argv("podman", IMAGE, binds=[CAMPAIGN], network=True)
    assert "--network" not in argv
    assert argv[-2:] == [IMAGE, "python"]  # no digest: run by the reference
    assert "TOOLKIT_IMAGE_DIGEST" not in " ".join(argv)
    by_tag = container_argv("podman", IMAGE, binds=[CAMPAIGN], digest=DIGEST, run_by_digest=False)
    assert by_tag[-2:] == [IMAGE, "python"] and f"TOOLKIT_IMAGE_DIGEST={DIGEST}" in by_tag
    bare_hex = container_argv("podman", IMAGE, binds=[CAMPAIGN], digest="ab" * 32)
    assert bare_hex[-2] == DIGEST and f"TOOLKIT_IMAGE_DIGEST={DIGEST}" in bare_hex


def test_binds_workdir_env_and_extra_args():
    argv = container_argv(
        "podman",
        IMAGE,
        binds=[CAMPAIGN, JOBS, CAMPAIGN + "/"],
        ro_binds=["/models", JOBS],
        workdir="/scratch",
        env={"TOOLKIT_RUN": "a b"},
        pass_env=["MY_VAR", "SLURM_X"],
        python="/opt/toolkit/bin/python",
        executable="/usr/bin/podman",
        extra_args=["--cgroups=disabled"],
    )
    assert argv[0] == "/usr/bin/podman"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-v"] == [f"{CAMPAIGN}:{CAMPAIGN}", "/models:/models:ro"]
    assert argv[argv.index("--workdir") + 1] == "/scratch"
    assert ["-e", "MY_VAR"] == argv[argv.index("MY_VAR") - 1 : argv.index("MY_VAR") + 1]
    assert "SLURM_X" not in argv  # already passed by the SLURM_* pattern
    assert "TOOLKIT_RUN=a b" in argv
    assert argv[-3:] == ["--cgroups=disabled", IMAGE, "/opt/toolkit/bin/python"]


def test_submitit_puts_its_arguments_after_the_prefix(tmp_path):
    import submitit

    folder = tmp_path / "jobs dir"
    python = container_python("podman", IMAGE, binds=[tmp_path], digest=DIGEST)
    local = submitit.LocalExecutor(folder, python=python)
    slurm = submitit.SlurmExecutor(folder, python=python)
    want = [
        *container_argv("podman", IMAGE, binds=[tmp_path], digest=DIGEST),
        "-u",
        "-m",
        "submitit.core._submit",
        str(folder),
    ]
    assert shlex.split(local._submitit_command_str) == want
    assert shlex.split(slurm._submitit_command_str) == want


# --- quoting: no shell injection from a manifest ---------------------------------------------------


def _recorder(tmp_path: Path) -> Path:
    """A fake runtime that writes its argv (JSON) to $ARGV_OUT."""
    fake = tmp_path / "fake-runtime"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\njson.dump(sys.argv[1:], open(os.environ['ARGV_OUT'], 'w'))\n"
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("runtime", ["podman", "docker", "apptainer"])
def test_hostile_paths_round_trip_through_a_shell_and_shlex(tmp_path, runtime):
    fake = _recorder(tmp_path)
    for path in HOSTILE:
        argv = container_argv(
            runtime,
            "/imgs/my image.sif" if runtime == "apptainer" else IMAGE,
            binds=[path, path + "/jobs"],
            digest=DIGEST,
            executable=str(fake),
            user="1:1",
            env={"TOOLKIT_NOTE": path},
        )
        assert f"{path}:{path}" in argv
        command = shlex.join(argv)
        assert shlex.split(command) == argv  # submitit's local executor
        expected = argv[argv.index(str(fake)) + 1 :] + ["-u", "-m", "submitit.core._submit", path + "/jobs"]
        # submitit's Slurm executor: the string goes into a bash script
        script = f"{command} -u -m submitit.core._submit {shlex.quote(path + '/jobs')}"
        out = tmp_path / "argv.json"
        subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env={**os.environ, "ARGV_OUT": str(out)}, check=True, timeout=30
        )
        assert json.loads(out.read_text()) == expected, path
        out.unlink()
        assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("bad", ["relative/path", "/has:colon", "/has,comma", "/new\nline", "/nul\0byte"])
def test_paths_that_cannot_be_bound_are_refused(bad):
    for runtime in c.RUNTIMES:
        with pytest.raises(ContainerError):
            container_argv(runtime, "/x.sif" if runtime == "apptainer" else IMAGE, binds=[bad])


def test_options_cannot_be_smuggled_in():
    with pytest.raises(ContainerError, match="bad container image"):
        container_argv("podman", "--privileged", binds=[CAMPAIGN])
    with pytest.raises(ContainerError, match="bad python"):
        container_argv("podman", IMAGE, python="-c")
    with pytest.raises(ContainerError, match="variable name"):
        container_argv("podman", IMAGE, env={"A=B": "x"})
    with pytest.raises(ContainerError, match="variable name"):
        container_argv("podman", IMAGE, pass_env=["X; rm -rf /"])
    with pytest.raises(ContainerError, match="digest"):
        container_argv("podman", IMAGE, digest="sha256:nothex")
    with pytest.raises(ContainerError, match="host folder"):
        container_argv("podman", IMAGE, env={"TOOLKIT_CACHE": "/home/me/.cache/toolkit"})
    with pytest.raises(ContainerError, match="unknown container runtime"):
        container_argv("singularity", IMAGE)
    # a variable's value is one argv element whatever it holds
    argv = container_argv("podman", IMAGE, env={"TOOLKIT_NOTE": "x -v /:/host --privileged"})
    assert "TOOLKIT_NOTE=x -v /:/host --privileged" in argv and "--privileged" not in argv


# --- the job's variables inside apptainer (its wrapper, run for real with a fake apptainer) ----------


def test_apptainer_wrapper_passes_the_jobs_variables(tmp_path):
    fake = tmp_path / "apptainer"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items()"
        " if k.startswith('APPTAINERENV_')}}, open(os.environ['ARGV_OUT'], 'w'))\n"
    )
    fake.chmod(0o755)
    sif = tmp_path / "t k.sif"
    argv = container_argv(
        "apptainer", str(sif), binds=[str(tmp_path)], digest=DIGEST, executable=str(fake), pass_env=["MY_VAR"]
    )
    out = tmp_path / "out.json"
    tricky = "a \"b\" 'c' $(touch PWNED) `x` \\n ;"
    env = {
        "PATH": os.environ["PATH"],
        "ARGV_OUT": str(out),
        "SLURM_JOB_ID": "42",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURMD_NODENAME": "gpu07",
        "SUBMITIT_EXECUTOR": "slurm",
        "CUDA_VISIBLE_DEVICES": "",
        "MY_VAR": tricky,
        "TOOLKIT_CACHE": "/home/me/.cache/toolkit",
        "PYTHONPATH": "/host/lib",
        "UNRELATED": "x",
        # submitit's local controller sets it to this very command: apptainer 1.4.5 failed to
        # parse it in its environment script (seen in a real run); the job does not need it
        "SUBMITIT_LOCAL_COMMAND": shlex.join(argv),
    }
    subprocess.run([*argv, "-u", "-m", "submitit.core._submit", "/f"], env=env, cwd=tmp_path, check=True, timeout=30)
    got = json.loads(out.read_text())
    assert got["argv"] == [
        "exec",
        "--cleanenv",
        "--bind",
        f"{tmp_path}:{tmp_path}",
        "--pwd",
        str(tmp_path),
        str(sif),
        "python",
        "-u",
        "-m",
        "submitit.core._submit",
        "/f",
    ]
    assert got["env"] == {
        "APPTAINERENV_TOOLKIT_IMAGE": str(sif),
        "APPTAINERENV_TOOLKIT_IMAGE_DIGEST": DIGEST,
        "APPTAINERENV_SLURM_JOB_ID": "42",
        "APPTAINERENV_SLURM_ARRAY_TASK_ID": "3",
        "APPTAINERENV_SLURMD_NODENAME": "gpu07",
        "APPTAINERENV_SUBMITIT_EXECUTOR": "slurm",
        "APPTAINERENV_CUDA_VISIBLE_DEVICES": "",
        "APPTAINERENV_MY_VAR": tricky,
    }
    assert not (tmp_path / "PWNED").exists()


# --- a real submitit job through the prefix (a fake runtime that drops the container) ---------------


def test_local_executor_runs_a_job_through_the_prefix(tmp_path):
    import submitit

    fake = tmp_path / "podman"
    fake.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        # stands in for `podman run ... IMAGE python`: records argv, runs the host python instead
        import json, os, sys
        args = sys.argv[1:]
        json.dump(args, open(os.path.join(os.environ["SUBMITIT_FOLDER_HINT"], "argv.json"), "w"))
        at = next(i for i in range(len(args) - 1) if args[i] == "python" and args[i + 1] == "-u")
        os.execv(sys.executable, [sys.executable, *args[at + 1:]])
        """)
    )
    fake.chmod(0o755)
    folder = tmp_path / "campaign it's $(x)" / "jobs"
    folder.mkdir(parents=True)
    python = container_python("podman", IMAGE, binds=[folder.parent, folder], executable=str(fake))
    executor = submitit.LocalExecutor(folder, python=python)
    executor.update_parameters(timeout_min=2)
    os.environ["SUBMITIT_FOLDER_HINT"] = str(tmp_path)
    try:
        job = executor.submit(os.path.basename, "/a/b.txt")
        assert job.result() == "b.txt"
    finally:
        del os.environ["SUBMITIT_FOLDER_HINT"]
    recorded = json.loads((tmp_path / "argv.json").read_text())
    assert recorded[:2] == ["run", "--rm"] and recorded[-4:] == ["-u", "-m", "submitit.core._submit", str(folder)]


# --- image_digest and check_runtime ---------------------------------------------------------------


def test_image_digest_of_a_sif_file(tmp_path):
    sif = tmp_path / "t.sif"
    sif.write_bytes(b"SIF" * 100_000)
    assert image_digest("apptainer", str(sif)) == "sha256:" + hashlib.sha256(b"SIF" * 100_000).hexdigest()
    with pytest.raises(ContainerError, match="cannot read the SIF image"):
        image_digest("apptainer", str(tmp_path / "missing.sif"))


def _fake_cli(tmp_path: Path, name: str, body: str) -> Path:
    fake = tmp_path / "bin" / name
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    return fake


def test_image_digest_asks_the_runtime(tmp_path):
    podman = _fake_cli(
        tmp_path,
        "podman",
        f'[ "$1 $2 $5" = "image inspect img:1" ] && echo {"cd" * 32} && exit 0\n'
        'echo "Error: img:2: image not known" >&2; exit 125\n',
    )
    docker = _fake_cli(tmp_path, "docker", f"echo sha256:{'ef' * 32}\n")
    assert image_digest("podman", "img:1", executable=str(podman)) == "sha256:" + "cd" * 32
    assert image_digest("docker", "img:1", executable=str(docker)) == "sha256:" + "ef" * 32
    with pytest.raises(ContainerError, match=r"no image 'img:2' \(Error: img:2: image not known\).*build.sh"):
        image_digest("podman", "img:2", executable=str(podman))


def test_check_runtime_errors_are_usage_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    for runtime in c.RUNTIMES:
        with pytest.raises(ContainerError, match=f"'{runtime}' is not installed") as err:
            check_runtime(runtime, IMAGE)
        assert isinstance(err.value, UsageError) and err.value.exit_code == 2
    podman = _fake_cli(
        tmp_path,
        "podman",
        '[ "$5" = "ok:1" ] && echo 1234 && exit 0\necho "Error: missing:1: image not known" >&2; exit 125\n',
    )
    assert check_runtime("podman", "ok:1") == str(podman)
    with pytest.raises(ContainerError, match="podman has no image 'missing:1'"):
        check_runtime("podman", "missing:1")
    _fake_cli(
        tmp_path, "docker", 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1\n'
    )
    with pytest.raises(ContainerError, match="docker cannot reach its daemon"):
        check_runtime("docker", IMAGE)
    _fake_cli(tmp_path, "apptainer", "exit 0\n")
    with pytest.raises(ContainerError, match="does not exist"):
        check_runtime("apptainer", str(tmp_path / "none.sif"))
    (tmp_path / "t.sif").write_bytes(b"x")
    assert check_runtime("apptainer", str(tmp_path / "t.sif")).endswith("/bin/apptainer")


def test_import_runs_nothing():
    code = (
        "import subprocess\n"
        "def boom(*a, **k): raise AssertionError('subprocess at import')\n"
        "subprocess.run = subprocess.Popen = boom\n"
        "import toolkit.launch.container\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the supervisor (podman/docker as launched by campaigns) ---------------------------------------


def test_supervised_podman_exact():
    argv = container_argv("podman", IMAGE, binds=[CAMPAIGN], digest=DIGEST, supervise=True)
    assert argv == [
        "/bin/sh",
        "-c",
        c._SUPERVISOR,
        "toolkit-container",
        "podman",
        "--rm",
        "--sig-proxy=false",
        "--network",
        "none",
        "-v",
        f"{CAMPAIGN}:{CAMPAIGN}",
        "--workdir",
        CAMPAIGN,
        *PODMAN_PASSED,
        "-e",
        f"TOOLKIT_IMAGE={IMAGE}",
        "-e",
        f"TOOLKIT_IMAGE_DIGEST={DIGEST}",
        DIGEST,
        "python",
    ]
    sif_argv = container_argv("apptainer", "/x/t.sif", binds=[CAMPAIGN], supervise=True)
    assert "toolkit-container" not in sif_argv  # apptainer's processes are the job's own children


FAKE_RUNTIME = """\
#!{python}
# stands in for podman: `run --name N ... IMAGE python ARGS` runs the host python with ARGS;
# `kill N` kills it (through a pid file); every call is logged
import json, os, signal, sys
log = os.path.join(os.environ["FAKE_DIR"], "calls.jsonl")
with open(log, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "kill":
    os.kill(int(open(os.path.join(os.environ["FAKE_DIR"], "pid")).read()), signal.SIGKILL)
    sys.exit(0)
args = sys.argv[1:]
at = args.index("python")
child = os.fork()
if child == 0:
    os.setsid()  # like conmon: not in the job's process group
    os.execv(sys.executable, [sys.executable, *args[at + 1:]])
open(os.path.join(os.environ["FAKE_DIR"], "pid"), "w").write(str(child))
signal.signal(signal.SIGTERM, signal.SIG_DFL)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


@pytest.fixture
def fake_podman(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "podman"
    fake.parent.mkdir()
    fake.write_text(FAKE_RUNTIME.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    return fake


def _calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_supervisor_passes_the_exit_code_and_names_the_container(tmp_path, fake_podman, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    argv = container_argv("podman", IMAGE, binds=[tmp_path], executable=str(fake_podman), supervise=True)
    proc = subprocess.run(
        [*argv, "-c", "import sys; print('hi'); sys.exit(7)"], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (7, "hi\n")
    [call] = _calls(tmp_path)
    assert call[:2] == ["run", "--name"] and re.fullmatch(r"toolkit-4242-\d+-\d+", call[2])
    assert call[3:5] == ["--rm", "--sig-proxy=false"]


def test_supervisor_ignores_usr2_and_kills_the_container_on_term(tmp_path, fake_podman):
    argv = container_argv("podman", IMAGE, binds=[tmp_path], executable=str(fake_podman), supervise=True)
    job = subprocess.Popen([*argv, "-c", "import time; open('started', 'w').close(); time.sleep(60)"], cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR2)
    time.sleep(0.5)
    assert job.poll() is None and len(_calls(tmp_path)) == 1
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 143
    run_call, kill_call = _calls(tmp_path)
    assert kill_call == ["kill", run_call[2]]
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


# --- what campaigns launch: TaskImage and the GPU decision -----------------------------------------


def test_task_image_python_per_target():
    from toolkit.launch.container import TaskImage

    image = TaskImage("podman", IMAGE, DIGEST, CAMPAIGN)
    gpu, cpu = shlex.split(image.python(gpu_target=True)), shlex.split(image.python(gpu_target=False))
    assert gpu[gpu.index("--device") + 1] == "nvidia.com/gpu=all" and "--device" not in cpu
    assert "TOOLKIT_CONTAINER_RUNTIME=podman" in cpu and cpu[:2] == ["/bin/sh", "-c"]
    assert cpu[cpu.index("--network") + 1] == "none" and cpu[-2:] == [DIGEST, "python"]
    never = TaskImage("docker", IMAGE, DIGEST, CAMPAIGN, gpu=False, network=True, extra_args=("--shm-size=1g",))
    argv = shlex.split(never.python(gpu_target=True))
    assert "--gpus" not in argv and "--network" not in argv and argv[-3:] == ["--shm-size=1g", DIGEST, "python"]
    sif = shlex.split(TaskImage("apptainer", "/x/t.sif", DIGEST, CAMPAIGN).python(gpu_target=True))
    assert sif[0] == "env" and "--nv" in sif and "APPTAINERENV_TOOLKIT_CONTAINER_RUNTIME=apptainer" in sif
    assert image.record() == {"runtime": "podman", "image": IMAGE, "digest": DIGEST}


def test_input_files_of_params_are_bound_read_only(write_manifest):
    from toolkit.launch.container import TaskImage
    from toolkit.manifest import load_manifest
    from toolkit.plan import build_plan
    from toolkit.submit import input_files

    image = TaskImage("podman", IMAGE, DIGEST, CAMPAIGN, input_files=("/data/paper one.pdf",))
    argv = shlex.split(image.python(gpu_target=False))
    assert argv[argv.index("/data/paper one.pdf:/data/paper one.pdf:ro") - 1] == "-v"
    pdf = Path(__file__).resolve().parents[1] / "manifests" / "data" / "sample.pdf"
    manifest = write_manifest(f"""\
        campaign: pdf-in-image
        model: {{source: tiny-random-llama}}
        prompts: ["hello"]
        experiments:
          - {{name: pdf.word_prediction, params: {{pdf_path: "{pdf}"}}}}
          - {{name: exp4.generate, params: {{max_new_tokens: 2}}}}
        """)
    assert input_files(build_plan(load_manifest(manifest))) == {str(pdf)}  # what submit binds


def test_gpu_targets_come_from_the_site_profile():
    from toolkit.launch.sites import gpu_target
    from toolkit.manifest import Resources
    from toolkit.manifest.site import find_site, load_site

    site, problems = load_site(find_site("default", Path(".")))
    assert not problems
    assert gpu_target(site, "a100", Resources()) and gpu_target(site, "h100", Resources(gpus=2))
    assert not gpu_target(site, "cpu", Resources())
    assert not gpu_target(site, "a100", Resources(gpus=0))
