"""YAML text → plain Python values with the line/column of every node.

This is the only place the toolkit parses YAML.  We compose nodes with PyYAML's SafeLoader (no
Python tags) and build values ourselves so that (a) every value keeps its source position for
error messages, (b) duplicate mapping keys are errors rather than silently overwritten, and
(c) alias expansion is bounded, so an alias bomb fails fast instead of eating memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_NODES = 200_000
MAX_DEPTH = 64

Path_ = tuple[Any, ...]


@dataclass
class Located:
    """Plain values plus a table of where each path (tuple of keys/indices) was written."""

    value: Any
    file: str
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> str:
        """`file:line:col` of the deepest known node on `path`."""
        for cut in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:cut]))
            if mark is not None:
                return f"{self.file}:{mark[0]}:{mark[1]}"
        return f"{self.file}:1:1"

    def where_key(self, path: Path_) -> str:
        """`file:line:col` of the mapping key that ends `path` (for unknown-key problems)."""
        mark = self.key_marks.get(tuple(path))
        return f"{self.file}:{mark[0]}:{mark[1]}" if mark is not None else self.where(path)


def short(value: Any, limit: int = 80) -> str:
    """repr() of a value for a message, cut to `limit` characters (a message stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class YamlProblem(Exception):
    """A located problem found while reading YAML (syntax, tags, duplicates, size)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load_located(text: str, file: str) -> Located:
    """Parse one YAML document into a `Located`; raise `YamlProblem` with `file:line:col`."""
    import yaml

    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else f"{file}:1:1"
        said = " ".join(str(part) for part in (err.context, err.problem) if part)  # e.g. "while scanning ... found ..."
        raise YamlProblem(f"{where}: YAML syntax: {' '.join(said.split())}") from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (NUL, other controls)
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise YamlProblem(
            f"{file}:{line}:{column}: YAML: character {err.character!r} is not allowed in YAML "
            "text (control characters other than tab and newline)"
        ) from None
    except yaml.YAMLError as err:
        raise YamlProblem(f"{file}:1:1: YAML: {' '.join(str(err).split())}") from None
    except RecursionError:  # nesting deeper than the parser's recursion allows
        raise YamlProblem(f"{file}:1:1: the document nests more than {MAX_DEPTH} levels; write it flatter") from None
    finally:
        if loader is not None:
            loader.dispose()
    located = Located(value=None, file=file)
    if node is None:
        return located
    builder = _Builder(loader, located)
    located.value = builder.build(node, (), 0)
    return located


class _Builder:
    def __init__(self, loader: Any, located: Located) -> None:
        self.loader = loader
        self.located = located
        self.visited = 0

    def _where(self, node: Any) -> str:
        return f"{self.located.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"

    def build(self, node: Any, path: Path_, depth: int) -> Any:
        import yaml

        self.visited += 1
        if depth > MAX_DEPTH:
            raise YamlProblem(
                f"{self._where(node)}: the document nests more than {MAX_DEPTH} levels (a recursive "
                "alias?); write it flatter"
            )
        if self.visited > MAX_NODES:
            raise YamlProblem(
                f"{self._where(node)}: the document expands to more than {MAX_NODES} nodes (alias bomb? or a list "
                "far too long); write the manifest without such aliases or lists"
            )
        self.located.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as err:
                raise YamlProblem(f"{self._where(node)}: {err.problem}") from None
            except Exception as err:  # e.g. `!!int abc`, `!!bool maybe`, `!!timestamp x`: a tag its value does not fit
                raise YamlProblem(
                    f"{self._where(node)}: the value {short(node.value)} does not fit its tag "
                    f"{node.tag!r} ({type(err).__name__})"
                ) from None
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, "tag:yaml.org,2002:seq")
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            self._check_tag(node, "tag:yaml.org,2002:map")
            return self._mapping(node, path, depth)
        raise YamlProblem(f"{self._where(node)}: unsupported YAML node")

    def _check_tag(self, node: Any, expected: str) -> None:
        if node.tag != expected:
            raise YamlProblem(f"{self._where(node)}: unsupported YAML tag {node.tag!r}")

    def _mapping(self, node: Any, path: Path_, depth: int) -> dict[Any, Any]:
        import yaml

        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(f"{self._where(key_node)}: merge keys (<<) are not supported")
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(f"{self._where(key_node)}: mapping keys must be plain scalars")
            key = self.build(key_node, path + ("<key>",), depth + 1)
            if not isinstance(key, (str, int)):
                key = str(key)
            if key in out:
                raise YamlProblem(f"{self._where(key_node)}: duplicate key {key!r}")
            self.located.key_marks[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out
