"""Reading a configuration file: size, encoding, strict YAML that remembers its lines.

Strict YAML is ``yaml.safe_load`` plus refused duplicate keys, with every mapping and
sequence remembering the line of each key and item, so that an error can name it. Every
problem becomes one ``ConfigError`` naming the file, the field path and what was wrong;
its text is built from the parser's problem and position only, never from the source line
(a misplaced secret could be on it). The main configuration and the web config file both
read their files here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from vmm_cert_exporter.documents import short

__all__ = [
    "FIELD_FILE",
    "FIELD_ROOT",
    "FIELD_SYNTAX",
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "DuplicateKeyError",
    "StrictSafeLoader",
    "YamlMapping",
    "YamlSequence",
    "config_dir",
    "format_path",
    "key_text",
    "parse_yaml",
    "read_config_text",
]

# Pseudo field paths for errors that are not about one key.
FIELD_FILE: Final = "(file)"  # the file cannot be read
FIELD_SYNTAX: Final = "(syntax)"  # not YAML
FIELD_ROOT: Final = "(root)"  # the document as a whole

# A configuration file is a few KiB; a huge one is a wrong path (or an attack on the parser).
MAX_CONFIG_BYTES: Final = 1024 * 1024


class ConfigError(Exception):
    """The one error for a bad configuration: ``str()`` is ``"<file>: <field>: <message>"``.

    ``message`` says what was expected and what was found, and ends with ``(line N)`` when the
    YAML position is known (also in ``line``). It never contains a secret value.
    """

    def __init__(self, file: str, field: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.message = message if line is None else f"{message} (line {line})"
        super().__init__(file, field, message, line)

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


def read_config_text(
    path: str | os.PathLike[str],
    *,
    subject: str = "the file",
    kind: str = "a configuration file",
    limit: int = MAX_CONFIG_BYTES,
    error: type[ConfigError] = ConfigError,
) -> str:
    """The text of the file at ``path``: at most ``limit`` bytes of UTF-8 (a BOM is dropped).

    ``subject`` names the file when it is missing and ``kind`` what a too large one is not.
    """
    display = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(display, FIELD_FILE, f"{subject} does not exist") from None
    except IsADirectoryError:
        raise error(display, FIELD_FILE, "expected a file, found a directory") from None
    except PermissionError:
        raise error(display, FIELD_FILE, "permission denied reading the file") from None
    except OSError as exc:
        raise error(display, FIELD_FILE, f"cannot read the file: {exc.strerror}") from None
    if len(data) > limit:
        raise error(display, FIELD_FILE, f"larger than {limit} bytes: not {kind}")
    try:
        # utf-8-sig: a byte order mark (Notepad) is harmless; other encodings are refused.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(display, FIELD_FILE, f"not valid UTF-8 (byte offset {exc.start})") from None


def config_dir(path: str | os.PathLike[str]) -> Path:
    """The directory relative paths in the file at ``path`` are resolved from."""
    return Path(os.path.abspath(os.fspath(path))).parent


def parse_yaml(text: str, *, file: str, error: type[ConfigError] = ConfigError) -> object:
    """One YAML document from ``text`` (``None`` when it is empty), read strictly."""
    try:
        loader = StrictSafeLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except DuplicateKeyError as exc:
        raise error(file, exc.path, str(exc.problem), exc.line) from None
    except yaml.MarkedYAMLError as exc:
        # Built from problem/context only: str(exc) would quote the offending source line,
        # and a misplaced secret could be on it.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        column = f" at column {mark.column + 1}" if mark is not None else ""
        message = f"not valid YAML: {what or 'syntax error'}{column}".strip()
        raise error(file, FIELD_SYNTAX, message, line) from None
    except yaml.YAMLError:
        raise error(file, FIELD_SYNTAX, "not valid YAML") from None
    except RecursionError:
        raise error(file, FIELD_SYNTAX, "not valid YAML: nested too deeply") from None


# --------------------------------------------------------------------------------------------
# The loader: safe_load semantics, duplicate keys refused, positions remembered


class YamlMapping(dict[Any, Any]):
    """A YAML mapping that remembers the 1-based line of each key and value."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Hashable, int] = {}
        self.value_lines: dict[Hashable, int] = {}


class YamlSequence(list[Any]):
    """A YAML sequence that remembers the 1-based line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class DuplicateKeyError(ConstructorError):
    def __init__(self, path: str, key: object, first_line: int, node: Node) -> None:
        super().__init__(
            None,
            None,
            f"duplicate key {short(key)} (first defined on line {first_line})",
            node.start_mark,
        )
        self.path = path
        self.key = key
        self.first_line = first_line
        self.line = node.start_mark.line + 1


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises ``DuplicateKeyError`` on a repeated mapping key.

    PyYAML silently keeps the last of two equal keys, so a second ``timeout:`` further down
    would win without a word. Construction is depth-first (``deep_construct``) so the loader
    knows the path of the mapping it is building and can name it in the error. Mappings and
    sequences come back as ``YamlMapping``/``YamlSequence`` carrying line numbers. Merge keys
    (``<<: *base``) still work: only keys written explicitly twice are an error.
    """

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.deep_construct = True
        self._path: list[object] = []

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if not isinstance(node, ScalarNode):
            return super().construct_object(node, deep)
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError):
            # PyYAML's scalar constructors raise plain Python errors for values that match a
            # type's pattern but are impossible (`2020-13-45`, a 5000-digit integer) or carry
            # an explicit tag they do not fit (`!!int abc`, `!!bool maybe`). Their messages
            # quote the value, so this one does not.
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(
                None,
                None,
                f"this value cannot be read as {kind} (quote it to make it a string)",
                node.start_mark,
            ) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        first_seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._construct_key(key_node)
            if key in first_seen:
                raise DuplicateKeyError(
                    format_path([*self._path, key]), key, first_seen[key], key_node
                )
            first_seen[key] = key_node.start_mark.line + 1
        self.flatten_mapping(node)
        result = YamlMapping(node.start_mark.line + 1)
        for key_node, value_node in node.value:
            key = self._construct_key(key_node)
            self._path.append(key)
            try:
                value = self.construct_object(value_node, deep=True)
            finally:
                self._path.pop()
            result[key] = value
            result.key_lines[key] = key_node.start_mark.line + 1
            result.value_lines[key] = value_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: SequenceNode, deep: bool = False) -> list[Any]:
        if not isinstance(node, SequenceNode):
            raise ConstructorError(
                None, None, f"expected a sequence node, but found {node.id}", node.start_mark
            )
        result = YamlSequence(node.start_mark.line + 1)
        for index, child in enumerate(node.value):
            self._path.append(index)
            try:
                result.append(self.construct_object(child, deep=True))
            finally:
                self._path.pop()
            result.item_lines.append(child.start_mark.line + 1)
        return result

    def _construct_key(self, key_node: Node) -> Hashable:
        key = self.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable) or isinstance(key, list | dict | set):
            raise ConstructorError(
                None, None, "found a mapping key that is not a plain value", key_node.start_mark
            )
        return key


def _construct_map(loader: StrictSafeLoader, node: MappingNode) -> dict[Hashable, Any]:
    return loader.construct_mapping(node)


def _construct_seq(loader: StrictSafeLoader, node: SequenceNode) -> list[Any]:
    return loader.construct_sequence(node)


# The stock constructors are generators that fill the container later, out of path order.
StrictSafeLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
StrictSafeLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def format_path(parts: Iterable[object]) -> str:
    """``winrm.timeout``, ``hosts[3].host``: the field path errors name."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{key_text(part)}" if out else key_text(part)
    return out or FIELD_ROOT


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_text(key: object) -> str:
    """A key as a field path shows it: plain keys as they are, anything odd quoted."""
    # Quoting makes a path like `collection.'interval '` show what is wrong with the key.
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return short(key)
