"""Check user-written values against the type annotations of an experiment's `Params` dataclass.

Supported annotations: int, float, bool, str, Literal[...], tuple[T, ...], list[T] (stored as
tuples so Params stay hashable), and Optional[T].  Everything else is a programming error in
the experiment module, reported as such.

File paths: a Params class may list str fields in a `PATH_FIELDS` class attribute; given
`base_dir` (the manifest's folder), a relative value there is made absolute against it before
`check()` runs, so a path never depends on the current directory of the validating or running
process (the absolute path is what the plan and the task id hold).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.manifest.located import short

Problem = Callable[[tuple[Any, ...], str], None]
INT64 = 2**63
MAX_PATH_CHARS = 4096


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    """(ok, converted value) for `value` against annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return (value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, conv = coerce(arg, value)
            if ok:
                return True, conv
        return False, value
    if origin in (tuple, list):
        if not isinstance(value, list):
            return False, value
        converted = []
        for item in value:
            ok, conv = coerce(typing.get_args(tp)[0], item)
            if not ok:
                return False, value
            converted.append(conv)
        return True, tuple(converted)
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:  # within int64: what a store attribute or a tensor index can hold
        return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64, value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(value, int):
            try:
                return True, float(value)
            except OverflowError:  # an integer beyond the float range
                return False, value
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported Params annotation {tp!r}")


def bad_path(value: str) -> bool:
    """A path no file system takes: a line break or NUL, too long, or a part over 255 bytes."""
    return (
        len(value) > MAX_PATH_CHARS
        or any(c in value for c in "\n\r\0")
        or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split("/"))
    )


def resolve_path(value: str, base_dir: Path) -> str:
    """`value` (`~` expanded) made absolute against `base_dir` if it is relative; a value that names
    no possible path (an unknown `~user`, a NUL byte) is returned as it is, for `check()` to refuse."""
    try:
        candidate = Path(value).expanduser()
        return str(candidate if candidate.is_absolute() else (base_dir / candidate).resolve())
    except (OSError, RuntimeError, ValueError):
        return value


def build_params(
    cls: type,
    raw: Any,
    path: tuple[Any, ...],
    problem: Problem,
    key_problem: Problem | None = None,
    base_dir: Path | None = None,
) -> Any | None:
    """Instantiate `cls` from the mapping `raw`, reporting every problem; None if any.

    `key_problem`, if given, reports unknown parameter names (located at the key, not the value).
    `base_dir`, if given, resolves the relative paths of the fields named in `cls.PATH_FIELDS`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problem(path, f"must be a mapping of parameter names to values, got {type(raw).__name__}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    before = _Counter(problem, key_problem)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            before.key(path + (key,), f"unknown parameter; {hint}valid: {', '.join(fields) or '(none)'}")
            continue
        ok, converted = coerce(hints[key], value)
        if not ok:
            huge = isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64
            before(
                path + (key,),
                f"must be {_type_name(hints[key])}" + (" (a 64-bit integer)" if huge else "") + f", got {short(value)}",
            )
            continue
        kwargs[key] = converted
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in raw:
            before(path, f"missing required parameter {name!r}")
    if before.count:
        return None
    for name in getattr(cls, "PATH_FIELDS", ()):
        if isinstance(kwargs.get(name), str) and bad_path(kwargs[name]):
            before(
                path + (name,),
                f"must be a file path (one line, at most {MAX_PATH_CHARS} characters, each part "
                f"at most 255 bytes), got {short(kwargs[name])}",
            )
        elif base_dir is not None and isinstance(kwargs.get(name), str):
            kwargs[name] = resolve_path(kwargs[name], base_dir)
    if before.count:
        return None
    instance = cls(**kwargs)
    check = getattr(instance, "check", None)
    for field_name, message in check() if check else []:
        before(path + (field_name,), message)
    return None if before.count else instance


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, default) rows for `toolkit experiments`."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows


class _Counter:
    def __init__(self, problem: Problem, key_problem: Problem | None = None) -> None:
        self.problem = problem
        self.key_problem = key_problem or problem
        self.count = 0

    def __call__(self, path: tuple[Any, ...], message: str) -> None:
        self.count += 1
        self.problem(path, message)

    def key(self, path: tuple[Any, ...], message: str) -> None:
        self.count += 1
        self.key_problem(path, message)
