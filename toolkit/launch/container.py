"""Run the worker's python inside a container image: podman, docker or apptainer.

submitit starts a job as ``<python> -u -m submitit.core._submit <folder>``, where ``<python>`` is
the ``python=`` string given to ``submitit.LocalExecutor`` / ``submitit.SlurmExecutor``.  This
module builds that prefix so the worker runs in the image instead::

    spec = dict(runtime="podman", image="localhost/toolkit:0.1.0", binds=[campaign_dir, folder],
                gpu=target_has_gpu, digest=image_digest("podman", "localhost/toolkit:0.1.0"))
    executor = submitit.SlurmExecutor(folder, python=container_python(**spec))

What the prefix does, for every runtime:

* binds each folder of ``binds`` (the campaign folder, the submitit jobs folder) read-write at the
  same path inside, so the paths submitit and the toolkit write in the pickles stay valid;
* passes the job's variables, whose values only exist when the job runs (SLURM_*, SUBMITIT_*,
  CUDA_VISIBLE_DEVICES, ...): by name, never by value, so nothing of them is frozen at submission;
* sets ``TOOLKIT_IMAGE`` and ``TOOLKIT_IMAGE_DIGEST`` (recorded by `toolkit.store.provenance`);
* exposes the GPUs only when ``gpu`` is true (``--device nvidia.com/gpu=all`` for podman, through
  CDI; ``--gpus all`` for docker; ``--nv`` for apptainer);
* cuts the network (podman/docker ``--network none``) unless ``network`` is true.

The host's TOOLKIT_CACHE and TOOLKIT_SITES are not passed: they name host folders, and the image
has its own (the packaged model converted at build time, the site profiles).

Everything here is a pure function of its arguments except `image_digest` and `check_runtime`,
which run the runtime (or read the SIF file).  The command comes back as a list and as one
string quoted with `shlex.join`: submitit's local executor splits it with `shlex.split` and runs
it without a shell, the Slurm executor writes it into the sbatch script; both read it back as the
same words, whatever the paths contain (spaces, quotes, ``;``, ``$()``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UsageError

RUNTIMES = ("podman", "docker", "apptainer")

#: Passed by prefix where the runtime can (podman ``--env 'P*'``, apptainer through its wrapper).
PASSED_PREFIXES = ("SLURM_", "SLURMD_", "SUBMITIT_")
#: Passed by name: the variables submitit, the toolkit and the numerics read, for docker (whose
#: ``-e`` takes no pattern) every one of them, for the others those outside PASSED_PREFIXES.
SLURM_NAMES = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_JOB_NAME",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_CPUS_PER_TASK",
    "SLURM_JOB_PARTITION",
    "SLURM_RESTART_COUNT",
    "SLURM_CLUSTER_NAME",
    "SLURMD_NODENAME",
)
SUBMITIT_NAMES = (
    "SUBMITIT_EXECUTOR",
    "SUBMITIT_FOLDER",
    "SUBMITIT_LOG_LEVEL",
    "SUBMITIT_PREEMPT_SIGNAL",
    "SUBMITIT_STDERR_TO_STDOUT",
    "SUBMITIT_LOCAL_JOB_ID",
    "SUBMITIT_LOCAL_NTASKS",
    "SUBMITIT_LOCAL_JOB_NUM_NODES",
    "SUBMITIT_LOCAL_NODEID",
    "SUBMITIT_LOCAL_GLOBALID",
    "SUBMITIT_LOCAL_LOCALID",
    "SUBMITIT_LOCAL_TIMEOUT_S",
    "SUBMITIT_LOCAL_SIGNAL_DELAY_S",
    "SUBMITIT_LOCAL_WITH_SHELL",
)
OTHER_NAMES = ("CUDA_VISIBLE_DEVICES", "TOOLKIT_FAULT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Never passed from the host (host paths; the image sets its own).
HOST_ONLY = ("TOOLKIT_CACHE", "TOOLKIT_SITES")

#: The apptainer wrapper: copies each passed variable the job has into APPTAINERENV_<name>, which
#: apptainer sets inside even with --cleanenv, then runs its arguments.  It is a constant: no path
#: or value is ever spliced into it (they follow as arguments).  SUBMITIT_LOCAL_COMMAND (this very
#: command line, for submitit's local controller) is not passed: apptainer 1.4's environment
#: script cannot parse its quotes and parentheses, and the job does not need it.
_APPTAINER_WRAPPER = (
    'for n in $(env | grep -oE "^({prefixes})[A-Za-z0-9_]*=" | tr -d = | grep -vx SUBMITIT_LOCAL_COMMAND) '
    "{names}; do "
    'eval "[ -n \\"\\${{$n+x}}\\" ] && export APPTAINERENV_$n=\\"\\${{$n}}\\""; '
    'done; exec "$@"'
)

#: The podman/docker supervisor (``supervise=True``): runs ``<runtime> run --name <unique> ...`` in
#: the background and removes the container when the job is signalled.  A container is not a
#: child of the job (podman's conmon and docker's daemon own it), so when Slurm or submitit kill
#: the job (scancel, preemption, time limit: SIGTERM, then SIGKILL), the client alone would die
#: and the task would keep running outside any job.  USR1/USR2 are swallowed (with --sig-proxy
#: off the container never sees them: there is no in-job requeue inside an image, see
#: docs/containers.md).  Constant text: the runtime and its arguments follow as "$@".
_SUPERVISOR = (
    'exe=$1; shift; name="toolkit-${SLURM_JOB_ID:-local}-$$-$(date +%s)"; '
    'stop() { "$exe" kill "$name" >/dev/null 2>&1; wait "$pid"; }; '
    "trap 'stop; exit 143' TERM; trap 'stop; exit 130' INT; trap 'stop; exit 129' HUP; "
    "trap : USR1 USR2; "
    '"$exe" run --name "$name" "$@" & pid=$!; '
    'while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || exit "$rc"; done'
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ContainerError(UsageError):
    """A container runtime, image or option is unusable; the message says what to do."""


def container_argv(
    runtime: str,
    image: str,
    *,
    binds: Iterable[str | os.PathLike[str]] = (),
    ro_binds: Iterable[str | os.PathLike[str]] = (),
    workdir: str | os.PathLike[str] | None = None,
    gpu: bool = False,
    network: bool = False,
    digest: str | None = None,
    env: Mapping[str, str] | None = None,
    pass_env: Iterable[str] = (),
    python: str = "python",
    executable: str | None = None,
    user: str | None = None,
    extra_args: Sequence[str] = (),
    run_by_digest: bool = True,
    supervise: bool = False,
) -> list[str]:
    """The argv prefix that runs `python` in `image`; submitit appends ``-u -m ...`` to it.

    runtime     podman | docker | apptainer
    image       an image reference (podman, docker) or a SIF file (apptainer)
    binds       folders bound read-write at the same path inside (duplicates and folders inside
                another bound folder are dropped); ro_binds: the same, read-only
    workdir     the working directory inside (default: the first bind)
    gpu         expose the GPUs (a GPU target); network: keep the network (podman, docker)
    digest      the image's id (`image_digest`): recorded as TOOLKIT_IMAGE_DIGEST; podman and
                docker also run the image by this id (unless run_by_digest is false), so a tag
                moved between submission and start (a rebuild) cannot change what the job runs
    env         fixed variables (set at submission); pass_env: more names passed from the job
    executable  the runtime's binary (default: its name, looked up on PATH when the job starts)
    user        docker only: "uid:gid" the container runs as (default: the current user's)
    extra_args  more runtime options, placed before the image (e.g. ["--cgroups=disabled"])
    supervise   podman/docker: run through `_SUPERVISOR` (a unique --name, --sig-proxy=false, the
                container killed when the job is), as the launchers do; apptainer needs none
                (its processes are the job's children)
    """
    if runtime not in RUNTIMES:
        raise ContainerError(f"unknown container runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if not image or image.startswith("-") or "\n" in image or "\0" in image:
        raise ContainerError(f"bad container image {image!r}")
    if not python or python.startswith("-"):
        raise ContainerError(f"bad python command {python!r}")
    rw = _bind_list(binds, "bind")
    ro = [p for p in _bind_list(ro_binds, "read-only bind") if not any(_inside(p, q) for q in rw)]
    rw, ro = _outermost(rw), _outermost(ro)
    cwd = _check_path(workdir, "workdir", bind=False) if workdir is not None else next(iter(rw or ro), None)
    fixed = _fixed_env(runtime, image, digest, env)
    names = _pass_names(pass_env)
    exe = executable or runtime
    if runtime == "apptainer":
        return _apptainer(exe, _sif(image), rw, ro, cwd, gpu, fixed, names, python, extra_args)
    argv = (
        ["/bin/sh", "-c", _SUPERVISOR, "toolkit-container", exe, "--rm", "--sig-proxy=false"]
        if supervise
        else [exe, "run", "--rm"]
    )
    if not network:
        argv += ["--network", "none"]
    if runtime == "docker":
        argv += ["--user", user or f"{os.getuid()}:{os.getgid()}"]
    elif user:
        argv += ["--user", user]
    for path in rw:
        argv += ["-v", f"{path}:{path}"]
    for path in ro:
        argv += ["-v", f"{path}:{path}:ro"]
    if cwd:
        argv += ["--workdir", cwd]
    if runtime == "podman":
        for prefix in PASSED_PREFIXES:
            argv += ["-e", f"{prefix}*"]
        passed = [n for n in (*OTHER_NAMES, *names) if not n.startswith(PASSED_PREFIXES)]
    else:
        passed = [*SLURM_NAMES, *SUBMITIT_NAMES, *OTHER_NAMES, *names]
    for name in _unique(passed):
        argv += ["-e", name]
    for key, value in fixed.items():
        argv += ["-e", f"{key}={value}"]
    if gpu:
        argv += ["--device", "nvidia.com/gpu=all"] if runtime == "podman" else ["--gpus", "all"]
    argv += list(extra_args)
    argv += [_run_ref(image, fixed.get("TOOLKIT_IMAGE_DIGEST") if run_by_digest else None), python]
    return argv


def container_python(runtime: str, image: str, **options: object) -> str:
    """`container_argv` as one shell-safe string, for ``submitit.*Executor(folder, python=...)``."""
    return shlex.join(container_argv(runtime, image, **options))  # type: ignore[arg-type]


def image_digest(runtime: str, image: str, executable: str | None = None, timeout: float = 120) -> str:
    """The identity of an image: ``sha256:<hex>`` of the SIF file (apptainer), or the image id
    that ``podman/docker image inspect`` reports, normalized to ``sha256:<hex>``."""
    if runtime not in RUNTIMES:
        raise ContainerError(f"unknown container runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "apptainer":
        path = Path(image)
        try:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise ContainerError(f"cannot read the SIF image {image}: {err.strerror or err}") from None
        return f"sha256:{digest.hexdigest()}"
    out = _run([executable or runtime, "image", "inspect", "--format", "{{.Id}}", image], timeout)
    if out.returncode != 0:
        raise ContainerError(
            f"{runtime} has no image {image!r} ({_last_line(out.stderr)}); build it with containers/build.sh or pull it"
        )
    ident = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    if not re.fullmatch(r"(sha256:)?[0-9a-f]{64}", ident):
        raise ContainerError(f"{runtime} image inspect {image} returned an unexpected id {ident!r}")
    return ident if ident.startswith("sha256:") else f"sha256:{ident}"


def check_runtime(runtime: str, image: str, executable: str | None = None, timeout: float = 120) -> str:
    """Raise ContainerError unless the runtime is installed and has the image; returns the
    runtime's resolved executable."""
    found = find_runtime(runtime, executable, timeout)
    check_image(runtime, image, found, timeout)
    return found


def find_runtime(runtime: str, executable: str | None = None, timeout: float = 120) -> str:
    """The runtime's executable on PATH (docker: and its daemon answers); ContainerError (what to
    install or start) otherwise."""
    if runtime not in RUNTIMES:
        raise ContainerError(f"unknown container runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    name = executable or runtime
    found = shutil.which(name)
    if found is None:
        hint = {
            "podman": "apt-get install podman (containers/build-base.sh does it)",
            "docker": "install Docker, or use podman",
            "apptainer": "module load apptainer, or install it (https://apptainer.org)",
        }[runtime]
        raise ContainerError(f"container runtime {name!r} is not installed (not on PATH): {hint}")
    if runtime == "docker":
        out = _run([found, "version", "--format", "{{.Server.Version}}"], timeout)
        if out.returncode != 0:
            raise ContainerError(
                f"docker cannot reach its daemon ({_last_line(out.stderr)}); start it, or set "
                f"DOCKER_HOST (e.g. to podman's socket)"
            )
    return found


def check_image(runtime: str, image: str, found: str, timeout: float = 120) -> None:
    """Raise ContainerError unless the runtime at `found` has the image (the SIF file exists)."""
    if runtime == "apptainer":
        path = Path(image)
        if not path.is_file():
            raise ContainerError(
                f"SIF image {image} does not exist; build it with apptainer build {image} containers/toolkit.def"
            )
        return
    out = _run([found, "image", "inspect", "--format", "{{.Id}}", image], timeout)
    if out.returncode != 0:
        detail = _last_line(out.stderr)
        known = re.search(r"image not known|no such (image|object)", detail, re.IGNORECASE)
        raise ContainerError(
            f"{runtime} has no image {image!r}{'' if known else f' ({detail})'}; build it with "
            f"containers/build.sh or pull it"
        )


@dataclass(frozen=True)
class TaskImage:
    """A campaign's image, resolved once at submission: what every task job runs in."""

    runtime: str
    image: str
    digest: str
    campaign_dir: str
    network: bool = False
    gpu: str | bool = "auto"
    extra_args: tuple[str, ...] = ()
    input_files: tuple[str, ...] = ()  # files named by experiment params (PATH_FIELDS), bound read-only

    def python(self, gpu_target: bool) -> str:
        """submitit's ``python=`` for a task job; GPUs only for a GPU target (and gpu: auto)."""
        return container_python(
            self.runtime,
            self.image,
            binds=[self.campaign_dir],
            digest=self.digest,
            ro_binds=self.input_files,
            gpu=gpu_target and self.gpu == "auto",
            network=self.network,
            env={"TOOLKIT_CONTAINER_RUNTIME": self.runtime},
            extra_args=self.extra_args,
            supervise=self.runtime != "apptainer",
        )

    def record(self) -> dict[str, str]:
        """What the submission record keeps: runtime, reference and digest."""
        return {"runtime": self.runtime, "image": self.image, "digest": self.digest}


# --- helpers -------------------------------------------------------------------------------------


def _apptainer(
    exe: str,
    sif: str,
    rw: list[str],
    ro: list[str],
    cwd: str | None,
    gpu: bool,
    fixed: dict[str, str],
    names: list[str],
    python: str,
    extra_args: Sequence[str],
) -> list[str]:
    # `env NAME=VALUE ...` sets the fixed values without a shell; the constant sh wrapper copies
    # the job's own variables (known only when it runs) into APPTAINERENV_*; --cleanenv keeps
    # every other host variable out (PYTHONPATH, LD_LIBRARY_PATH, a venv's PATH ...).
    wrapper_names = [n for n in _unique((*OTHER_NAMES, *names)) if not n.startswith(PASSED_PREFIXES)]
    script = _APPTAINER_WRAPPER.format(prefixes="|".join(PASSED_PREFIXES), names=" ".join(wrapper_names))
    argv = [
        "env",
        *(f"APPTAINERENV_{k}={v}" for k, v in fixed.items()),
        "/bin/sh",
        "-c",
        script,
        "toolkit-apptainer",
        exe,
        "exec",
        "--cleanenv",
    ]
    if gpu:
        argv.append("--nv")
    for path in rw:
        argv += ["--bind", f"{path}:{path}"]
    for path in ro:
        argv += ["--bind", f"{path}:{path}:ro"]
    if cwd:
        argv += ["--pwd", cwd]
    argv += list(extra_args)
    argv += [sif, python]
    return argv


def _fixed_env(runtime: str, image: str, digest: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    fixed = {"TOOLKIT_IMAGE": _sif(image) if runtime == "apptainer" else image}
    if digest:
        if not re.fullmatch(r"(sha256:)?[0-9a-f]{64}", digest):
            raise ContainerError(f"bad image digest {digest!r}: expected sha256:<64 hex digits>")
        fixed["TOOLKIT_IMAGE_DIGEST"] = digest if digest.startswith("sha256:") else f"sha256:{digest}"
    for key, value in (env or {}).items():
        if not _NAME.match(key):
            raise ContainerError(f"bad environment variable name {key!r}")
        if "\0" in value:
            raise ContainerError(f"environment variable {key} holds a NUL byte")
        if key in HOST_ONLY:
            raise ContainerError(f"{key} names a host folder; the image sets its own")
        fixed[key] = value
    return fixed


def _pass_names(names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        if not _NAME.match(name):
            raise ContainerError(f"bad environment variable name {name!r}")
        if name in HOST_ONLY:
            raise ContainerError(f"{name} names a host folder; the image sets its own")
        out.append(name)
    return out


def _run_ref(image: str, digest: str | None) -> str:
    return digest or image


def _sif(image: str) -> str:
    return os.path.abspath(image)


def _bind_list(paths: Iterable[str | os.PathLike[str]], what: str) -> list[str]:
    return _unique(_check_path(p, what, bind=True) for p in paths)


def _check_path(path: str | os.PathLike[str], what: str, bind: bool) -> str:
    text = os.fspath(path)
    if not os.path.isabs(text):
        raise ContainerError(f"{what} {text!r} must be an absolute path")
    if "\0" in text or "\n" in text:
        raise ContainerError(f"{what} {text!r} holds a NUL or newline character")
    if bind and ("," in text or ":" in text):
        # -v SRC:DST[:OPTS] and --bind SRC:DST,... cannot express these characters
        raise ContainerError(
            f"{what} {text!r} holds ':' or ',', which container bind options cannot express; "
            f"move the campaign to a folder without them"
        )
    return os.path.normpath(text)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(q != p and _inside(p, q) for q in paths)]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ContainerError(f"container runtime {argv[0]!r} is not installed (not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{' '.join(argv[:3])} did not answer within {timeout:.0f} s") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
