"""Reading users' YAML safely: whatever a file or an argument holds, the result is data or ONE error naming it.

PyYAML's safe loader raises more than ``yaml.YAMLError``: an impossible date (``2001-13-45``), ``!!float xyz`` or an
integer of more than 4,300 digits raise ``ValueError`` from the value's constructor, and nesting a few hundred levels
deep raises ``RecursionError``. Here each of these becomes the caller's error class naming the source and the line
and column, nesting is capped at :data:`MAX_DEPTH`, and aliases may not expand a document beyond :data:`MAX_NODES`
values (a few lines of anchors can otherwise stand for billions of values once something walks them).

>>> load_yaml("a: [1, 2]\\nb: {c: x}", "demo.yml")
{'a': [1, 2], 'b': {'c': 'x'}}
>>> load_yaml("when: 2001-13-45", "demo.yml")
Traceback (most recent call last):
...
mvector.errors.ConfigError: demo.yml: line 1, column 7: cannot read the value '2001-13-45': month must be in 1..12
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import yaml

from mvector.errors import ConfigError

__all__ = ["load_yaml", "read_yaml_file", "MAX_DEPTH", "MAX_NODES", "MAX_YAML_BYTES"]

#: Deepest nesting of lists and mappings accepted (configurations use three or four levels).
MAX_DEPTH = 64
#: Most values a document may hold once its aliases are expanded.
MAX_NODES = 200_000
#: Largest YAML file read (configurations are a few kB).
MAX_YAML_BYTES = 16 << 20


class _Limited(yaml.SafeLoader):
    """The safe loader with a nesting cap and value errors that carry the position of the value."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):  # a key given twice would silently drop the first value
            seen: dict[str, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key_node.value in seen:
                    first = seen[key_node.value].line + 1
                    problem = f"the key {key_node.value!r} appears twice in one mapping (first on line {first})"
                    raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
                seen[key_node.value] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as err:
            value = node.value if isinstance(node.value, str) else node.tag
            text = value if len(value) <= 40 else f"{value[:20]}...{value[-10:]} ({len(value)} characters)"
            problem = f"cannot read the value {text!r}: {str(err).split(';')[0]}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from err


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int], source: str, error: type) -> int:
    """Values under ``node`` counting every alias in full (memoised per node, so it costs one walk)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise error(f"{_where(source, node.start_mark)}: an alias (*name) refers to a value that contains it")
    open_nodes.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes, open_nodes, source, error) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, sizes, open_nodes, source, error)
            total += _expanded_size(v, sizes, open_nodes, source, error)
    open_nodes.discard(key)
    sizes[key] = min(total, MAX_NODES + 1)
    return sizes[key]


def _where(source: str, mark: Any) -> str:
    return f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source


def load_yaml(text: str, source: str, error: type[Exception] = ConfigError) -> Any:
    """Parse YAML ``text`` with the safe loader; any failure is ``error`` naming ``source`` and the position.

    ``source`` names where the text came from (a file, or ``override --loss_conf.x``).

    >>> load_yaml("[[[1]]]", "override --x")
    [[[1]]]
    >>> load_yaml("[" * 100 + "]" * 100, "override --x")
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: override --x: line 1, column 65: nested more than 64 levels deep
    """
    loader = None
    try:
        loader = _Limited(text)
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set(), source, error) > MAX_NODES:
            raise error(f"{source}: holds more than {MAX_NODES} values once its aliases (*name) are expanded")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        syntax = "not valid YAML, " if isinstance(err, (yaml.scanner.ScannerError, yaml.parser.ParserError)) else ""
        raise error(f"{source}: {syntax}{_where('', mark)[2:]}: {err.problem or err.context}") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, max(err.position, 0)) + 1
        char = err.character if isinstance(err.character, int) else ord(str(err.character)[:1] or "?")
        raise error(f"{source}: line {line}: the character U+{char:04X} is not allowed in YAML") from None
    except yaml.YAMLError as err:
        raise error(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply to read") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: Union[str, os.PathLike], what: str = "config", error: type[Exception] = ConfigError) -> Any:
    """Read and parse a YAML file (see :func:`load_yaml`); a missing, unreadable, oversized or non-UTF-8 file is
    ``error`` naming it (for text that is not UTF-8, the line and byte).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "bad.yml"
    >>> _ = p.write_bytes(b"a: 1\\nb: \\xff\\n")
    >>> read_yaml_file(p)
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: .../bad.yml: the config is not UTF-8 text (invalid start byte at line 2, byte 8)
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{path}: {size} bytes is too large for a {what} (at most {MAX_YAML_BYTES})")
        data = path.read_bytes()
    except OSError as err:
        raise error(f"cannot read the {what} {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{path}: the {what} is not UTF-8 text ({err.reason} at line {line}, byte {err.start})") from None
    return load_yaml(text, str(path), error)
