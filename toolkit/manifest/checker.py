"""Field-by-field validation of a parsed manifest into the frozen dataclasses of `model.py`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from toolkit.manifest.located import Located
from toolkit.manifest.located import short as _short
from toolkit.manifest.model import (
    DEVICE_MAPS,
    GPU_MODES,
    NUMERICS_FIELDS,
    RUNTIMES,
    TARGET_RE,
    Container,
    ExperimentSpec,
    Manifest,
    ModelSpec,
    Numerics,
    Resources,
    SiteProfile,
)
from toolkit.manifest.params import MAX_PATH_CHARS, coerce
from toolkit.manifest.params import bad_path as _bad_path
from toolkit.manifest.rules import NAME_RE, numeric_problem
from toolkit.manifest.rules import did_you_mean as _did_you_mean
from toolkit.manifest.site import available_sites, find_site, load_site

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_PROMPTS_BYTES = 16 * 1024 * 1024
MAX_EXPERIMENTS = 500
# Resources: the largest value accepted (beyond any node: surely a typo, e.g. MB written as GB)
RESOURCE_MAX = {"time_min": 366 * 24 * 60, "cpus": 4096, "gpus": 64, "array_parallelism": 1_000_000, "mem_gb": 65536.0}
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")

TOP_KEYS = ("campaign", "output", "model", "prompts", "targets", "experiments", "resources", "container", "site")
MODEL_KEYS = ("source", "revision", "device", "chat_template", "device_map") + NUMERICS_FIELDS
RESOURCE_KEYS = tuple(f.name for f in dataclasses.fields(Resources))
CONTAINER_KEYS = ("runtime", "image", "network", "gpu", "extra_args")


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        index = isinstance(part, int) and not isinstance(part, bool)
        out += f"[{part}]" if index else (f".{part}" if out else str(part))
    return out


class Checker:
    """Collects every problem of one manifest; `check()` returns the Manifest or None."""

    def __init__(self, located: Located, manifest_dir: Path, site_override: str | None = None) -> None:
        self.located = located
        self.dir = manifest_dir
        self.site_override = site_override
        self.problems: list[str] = []

    def problem(self, path: tuple[Any, ...], message: str, at_key: bool = False) -> None:
        field = _dotted(path)
        where = self.located.where_key(path) if at_key else self.located.where(path)
        self.problems.append(f"{where}: {field + ': ' if field else ''}{message}")

    def check_keys(self, data: dict[str, Any], allowed: tuple[str, ...], path: tuple[Any, ...]) -> None:
        """One problem per unknown key of `data` at `path`, with a did-you-mean and the valid keys."""
        for key in data:
            if key not in allowed:
                hint = _did_you_mean(key, allowed)
                self.problem(path + (key,), f"unknown key; {hint}valid keys: {', '.join(allowed)}", at_key=True)

    def mapping(self, value: Any, path: tuple[Any, ...], required: bool = False) -> dict[str, Any] | None:
        """`value` as a mapping (None counts as empty unless `required`), or None after a problem."""
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, got {_kind(value)}")
            return None
        return value

    def integer(self, value: Any, path: tuple[Any, ...], minimum: int, maximum: int | None = None) -> int | None:
        """`value` as an int in [minimum, maximum] (booleans refused), or None after a problem."""
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(path, f"must be an integer, got {_short(value)}")
            return None
        if value < minimum:
            self.problem(path, f"must be >= {minimum}, got {_short(value)}")
            return None
        if maximum is not None and value > maximum:
            self.problem(path, f"must be <= {maximum}, got {_short(value)}")
            return None
        return value

    # -- sections -------------------------------------------------------------------------
    def check(self, path: Path, text: str, sha256: str) -> Manifest | None:
        data = self.located.value
        if not isinstance(data, dict):
            self.problem((), f"a manifest must be a mapping with keys {', '.join(TOP_KEYS)}, got {_kind(data)}")
            return None
        self.check_keys(data, TOP_KEYS, ())
        for key in ("campaign", "model", "experiments"):
            if key not in data:
                self.problem((), f"missing required key {key!r}")
            elif data[key] is None:
                self.problem((key,), "is empty; a value is required")
        campaign = self._campaign(data.get("campaign"))
        output = self._output(data.get("output", "campaigns"))
        model, numerics = self._model(data.get("model"))
        before = len(self.problems)
        prompts = self._prompts(data.get("prompts", []))
        if not prompts and len(self.problems) == before:
            self._no_prompts(data)
        site = self._site(data.get("site", "default"))
        targets = self.target_list(data.get("targets", ["cpu"]), ("targets",), site)
        resources = self.resources_override(data.get("resources"), ("resources",), Resources())
        container = self._container(data.get("container"))
        experiments = self._experiments(data.get("experiments"), targets, numerics, resources, site)
        if model is not None and model.device_map is not None and experiments is not None:
            self._check_sharded(experiments)
        if (
            self.problems
            or campaign is None
            or model is None
            or site is None
            or experiments is None
            or resources is None
            or container is None
        ):
            return None
        return Manifest(
            path=path,
            text=text,
            sha256=sha256,
            campaign=campaign,
            output=output,
            model=model,
            prompts=prompts,
            targets=targets,
            experiments=experiments,
            resources=resources,
            container=container,
            site=site,
            numerics=numerics,
        )

    def _campaign(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
            self.problem(
                ("campaign",),
                f"must match [a-z0-9][a-z0-9._-]{{0,63}} (a folder name, no "
                f"'..', '/', spaces or shell characters), got {_short(value)}",
            )
            return None
        return value

    def _output(self, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip() or _bad_path(value):
            self.problem(
                ("output",),
                f"must be a folder path (one line, at most {MAX_PATH_CHARS} characters, "
                f"each part at most 255 bytes), got {_short(value)}",
            )
            return Path("campaigns")
        return Path(value)

    def _model(self, value: Any) -> tuple[ModelSpec | None, Numerics]:
        if value is None:  # missing or empty: already reported by check()
            return None, Numerics()
        data = self.mapping(value, ("model",), required=True)
        if data is None:
            return None, Numerics()
        self.check_keys(data, MODEL_KEYS, ("model",))
        numerics = self.numerics_override(
            {k: v for k, v in data.items() if k in NUMERICS_FIELDS}, ("model",), Numerics()
        )
        source = data.get("source")
        if not isinstance(source, str) or not source.strip():
            self.problem(
                ("model", "source"), f"must name a packaged model, a local folder or a hub id, got {_short(source)}"
            )
            return None, numerics
        source = self._resolve_source(source)
        device = data.get("device", "auto")
        if not isinstance(device, str) or not DEVICE_RE.match(device):
            self.problem(("model", "device"), f"must be auto, cpu, cuda, cuda:N or mps, got {_short(device)}")
        revision = data.get("revision")
        if revision is not None and not isinstance(revision, str):
            self.problem(("model", "revision"), f"must be a string, got {_short(revision)}")
        chat_template = data.get("chat_template", False)
        if not isinstance(chat_template, bool):
            self.problem(("model", "chat_template"), f"must be true or false, got {_short(chat_template)}")
        device_map = data.get("device_map")
        if device_map not in DEVICE_MAPS:
            self.problem(("model", "device_map"), f"must be auto or null, got {_short(device_map)}")
        spec = ModelSpec(source or "", revision, str(device), chat_template is True, device_map or None)
        return spec, numerics

    def _check_sharded(self, experiments: tuple[ExperimentSpec, ...]) -> None:
        """`device_map: auto` splits the model over devices; an experiment taking JVPs through the
        model (its NEEDS_EAGER_ATTENTION, torch.func.jvp) cannot run on a model split by accelerate."""
        from toolkit import experiments as registry
        from toolkit.manifest.experiments import param_points  # every sweep point's Params

        for spec in experiments:
            module = registry.get(spec.name)
            if any(registry.needs_eager_attention(module, p) for p, _ in param_points(spec, module)):
                self.problem(
                    ("model", "device_map"),
                    f"is auto, but {spec.name} (entry {spec.id!r}) takes JVPs through the model "
                    "(torch.func.jvp), which cannot run on a model split over devices; remove device_map "
                    "or run that entry from a manifest without it",
                )

    def _resolve_source(self, source: str) -> str | None:
        from toolkit.models.packaged import PACKAGED

        if source in PACKAGED:
            return source
        if _bad_path(source):
            self.problem(
                ("model", "source"),
                f"must be one line of at most {MAX_PATH_CHARS} characters (each "
                f"path part at most 255 bytes), got {_short(source)}",
            )
            return None
        candidate = self.dir / source
        try:
            candidate = candidate.expanduser()
            if candidate.is_dir():
                return str(candidate.resolve())
        except (OSError, RuntimeError, ValueError):
            pass
        if source.startswith((".", "/", "~")) or not HUB_ID_RE.match(source):
            self.problem(
                ("model", "source"),
                f"{source!r} is not a packaged model ({', '.join(PACKAGED)}), an existing folder (no folder "
                f"{candidate}), or a hub id like org/name",
            )
            return None
        return source

    def numerics_override(self, data: dict[str, Any], path: tuple[Any, ...], base: Numerics) -> Numerics:
        """`base` with the numerics keys of `data` applied, each checked against its choices."""
        values = dataclasses.asdict(base)
        for key, value in data.items():
            why = numeric_problem(key, value)
            if why is not None:
                self.problem(path + (key,), why)
            else:
                values[key] = value
        return Numerics(**values)

    def _prompts(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, dict):
            self.check_keys(value, ("file",), ("prompts",))
            name = value.get("file")
            if not isinstance(name, str) or not name.strip() or _bad_path(name):
                self.problem(
                    ("prompts", "file"), f"must be a path to a text file, one prompt per line, got {_short(name)}"
                )
                return ()
            try:
                full = self.dir / Path(name).expanduser()
                if full.exists() and not full.is_file():
                    self.problem(("prompts", "file"), f"{name!r} is not a regular file (a folder, a device or a pipe?)")
                    return ()
                with open(full, "rb") as handle:
                    raw = handle.read(MAX_PROMPTS_BYTES + 1)
                if len(raw) > MAX_PROMPTS_BYTES:
                    self.problem(("prompts", "file"), f"{name!r} is larger than {MAX_PROMPTS_BYTES} bytes")
                    return ()
                lines = raw.decode("utf-8").splitlines()
            except UnicodeDecodeError as err:
                line = raw.count(b"\n", 0, err.start) + 1
                self.problem(
                    ("prompts", "file"),
                    f"cannot read {name!r}: not UTF-8 text ({err.reason} at byte {err.start}, line {line})",
                )
                return ()
            except (OSError, RuntimeError, ValueError) as err:
                self.problem(("prompts", "file"), f"cannot read {name!r}: {getattr(err, 'strerror', None) or err}")
                return ()
            if "\0" in "".join(lines):
                self.problem(("prompts", "file"), f"{name!r} holds NUL bytes: it is not a text file")
                return ()
            prompts = tuple(line for line in lines if line.strip())
            if not prompts:
                self.problem(
                    ("prompts", "file"), f"{name!r} holds no prompts (only blank lines); write one prompt per line"
                )
            return prompts
        if not isinstance(value, list):
            self.problem(("prompts",), f"must be a list of strings or {{file: path}}, got {_kind(value)}")
            return ()
        for i, prompt in enumerate(value):
            if not isinstance(prompt, str) or not prompt.strip():
                self.problem(("prompts", i), f"must be a non-empty string, got {_short(prompt)}")
            elif "\0" in prompt:
                self.problem(("prompts", i), "must not hold a NUL character")
        return tuple(p for p in value if isinstance(p, str))

    def _no_prompts(self, data: dict[str, Any]) -> None:
        """The prompt list is empty: refuse it if an experiment of the manifest reads prompts."""
        from toolkit import experiments

        entries = data.get("experiments")
        readers = [
            (i, e["name"])
            for i, e in enumerate(entries if isinstance(entries, list) else [])
            if isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and e["name"] in experiments.REGISTRY
            and experiments.reads_prompts(experiments.get(e["name"]))
        ]
        if not readers:
            return
        unique = list(dict.fromkeys(name for _, name in readers))
        names = ", ".join(unique)
        if "prompts" in data:
            self.problem(
                ("prompts",),
                f"is empty, but {names} {'reads' if len(unique) == 1 else 'read'} prompts: give at least one prompt",
            )
        else:
            self.problem(
                ("experiments", readers[0][0], "name"),
                f"{readers[0][1]} reads prompts, but the manifest "
                "has no `prompts:`; add a list of prompts (or {file: prompts.txt})",
            )

    def _site(self, value: Any) -> SiteProfile | None:
        name = self.site_override or value
        if not isinstance(name, str) or not name:
            self.problem(("site",), f"must name a site profile, got {_short(value)}")
            return None
        try:
            path = find_site(name, self.dir) if not _bad_path(name) else None
        except (OSError, RuntimeError, ValueError):
            path = None
        if path is None:
            self.problem(
                ("site",),
                f"unknown site profile {_short(name, MAX_PATH_CHARS + 2) if not _bad_path(name) else _short(name)}; "
                f"{_did_you_mean(name, available_sites())}"
                f"known: {', '.join(available_sites()) or '(none)'}; or give a path to a .yaml file",
            )
            return None
        profile, problems = load_site(path)
        self.problems.extend(problems)
        return profile

    def target_list(self, value: Any, path: tuple[Any, ...], site: SiteProfile | None) -> tuple[str, ...]:
        """A non-empty list of target names that the site profile knows."""
        if not isinstance(value, list) or not value:
            self.problem(path, f"must be a non-empty list of GPU types, got {_short(value)}")
            return ()
        seen: list[str] = []
        for i, target in enumerate(value):
            if not isinstance(target, str) or not TARGET_RE.match(target):
                self.problem(path + (i,), f"must be a lower-case target name like a100, got {target!r}")
            elif target in seen:
                self.problem(path + (i,), f"duplicate target {target!r}")
            elif site is not None and target not in site.targets:
                self.problem(
                    path + (i,),
                    f"unknown target {target!r} for site {site.name!r}; "
                    f"{_did_you_mean(target, list(site.targets))}known: {', '.join(site.targets)}",
                )
            else:
                seen.append(target)
        return tuple(seen)

    def resources_override(self, value: Any, path: tuple[Any, ...], base: Resources) -> Resources | None:
        """`base` with the resource keys of `value` applied and range-checked, or None after a problem."""
        data = self.mapping(value, path)
        if data is None:
            return None
        self.check_keys(data, RESOURCE_KEYS, path)
        values = dataclasses.asdict(base)
        bad = False
        for key in ("time_min", "cpus", "gpus", "array_parallelism"):
            if key == "array_parallelism" and key in data and data[key] is None:
                values[key] = None  # null: no throttle
            elif key in data:
                values[key] = self.integer(data[key], path + (key,), 0 if key == "gpus" else 1, int(RESOURCE_MAX[key]))
                bad |= values[key] is None
        if "mem_gb" in data:
            ok, mem = coerce(float, data["mem_gb"])
            if not ok or not 0 < mem <= RESOURCE_MAX["mem_gb"]:
                self.problem(
                    path + ("mem_gb",),
                    f"must be a number > 0 and <= {RESOURCE_MAX['mem_gb']:g}, got {_short(data['mem_gb'])}",
                )
                bad = True
            values["mem_gb"] = mem
        if bad:
            return None
        return Resources(**values)

    def _container(self, value: Any) -> Container | None:
        data = self.mapping(value, ("container",))
        if data is None:
            return None
        self.check_keys(data, CONTAINER_KEYS, ("container",))
        before = len(self.problems)
        runtime = data.get("runtime", "none")
        if runtime not in RUNTIMES:
            hint = f"; {_did_you_mean(runtime, RUNTIMES).rstrip()}" if _did_you_mean(runtime, RUNTIMES) else ""
            self.problem(("container", "runtime"), f"must be one of {', '.join(RUNTIMES)}, got {_short(runtime)}{hint}")
            return None
        image = data.get("image")
        if runtime == "none":
            if image is not None:
                self.problem(
                    ("container", "image"),
                    "is set but runtime is none: set runtime to podman, docker "
                    "or apptainer to run the tasks in it, or remove image",
                )
        elif (
            not isinstance(image, str)
            or not image.strip()
            or image.startswith("-")
            or any(c in image for c in "\n\r\0")
        ):
            where = ("container", "image") if "image" in data else ("container",)
            self.problem(
                where,
                f"runtime {runtime} needs an image: "
                + (
                    "the path of a .sif file"
                    if runtime == "apptainer"
                    else "an image reference like localhost/toolkit:0.1.0 (containers/build.sh builds it)"
                )
                + f", got {_short(image)}",
            )
        elif runtime == "apptainer":
            try:
                image = str((self.dir / Path(image).expanduser()).resolve())
            except (OSError, RuntimeError, ValueError) as err:
                self.problem(("container", "image"), f"cannot resolve {_short(image)}: {err}")
        network = data.get("network", False)
        if not isinstance(network, bool):
            self.problem(("container", "network"), f"must be true or false, got {network!r}")
        gpu = data.get("gpu", "auto")
        if not any(gpu is mode or (isinstance(gpu, str) and gpu == mode) for mode in GPU_MODES):
            self.problem(
                ("container", "gpu"), f"must be auto (GPU targets get the GPUs) or false (never), got {_short(gpu)}"
            )
        extra = data.get("extra_args", [])
        if not isinstance(extra, list) or not all(
            isinstance(a, str) and a and not any(c in a for c in "\n\r\0") for a in extra
        ):
            self.problem(
                ("container", "extra_args"), f"must be a list of non-empty single-line strings, got {_short(extra)}"
            )
        if len(self.problems) > before:
            return None
        # whether the runtime is installed and has the image is checked by the preflight
        # (toolkit.launch.preflight), not here: validation reads values only
        return Container(
            runtime=runtime,
            image=image if runtime != "none" else None,
            network=network,
            gpu=gpu,
            extra_args=tuple(extra),
        )

    def _experiments(
        self,
        value: Any,
        targets: tuple[str, ...],
        numerics: Numerics,
        resources: Resources | None,
        site: SiteProfile | None,
    ) -> tuple[ExperimentSpec, ...] | None:
        from toolkit.manifest.experiments import check_experiments

        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.problem(("experiments",), f"must be a non-empty list of experiments, got {_kind(value)}")
            return None
        if len(value) > MAX_EXPERIMENTS:
            self.problem(
                ("experiments",),
                f"has {len(value)} entries, more than {MAX_EXPERIMENTS}: use sweeps, or split the campaign",
            )
            return None
        return check_experiments(self, value, targets, numerics, resources or Resources(), site)


def _kind(value: Any) -> str:
    if isinstance(value, (list, dict)) and not value:
        return f"an empty {'list' if isinstance(value, list) else 'mapping'}"
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), _short(value))
