"""Configuration keys declared once, on the fields of frozen dataclasses.

A section is a dataclass. Each field that is a key carries a ``Key`` in its metadata
(``field(default=..., metadata=duration(...))``): how its YAML value is read and checked,
its type, bounds and reference text. The field's default is the key's default. From that
one declaration come the allowed keys of the section (unknown ones are refused with a
did-you-mean), the value, the error messages, and the list of keys that
``docs/configuration.md`` is checked against (``declared_keys``).

Fields are read in declaration order. A reader may ask for the value of another field of
its section (``Section.value``), which is then read first, so a rule that spans keys is
written where it is reported. The readers of the value types (strings, durations, paths,
secrets, ...) are in ``config_values.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar, cast

import yaml

from vmm_cert_exporter.config_file import (
    FIELD_ROOT,
    ConfigError,
    YamlMapping,
    YamlSequence,
    key_text,
)
from vmm_cert_exporter.documents import describe, short
from vmm_cert_exporter.durations import format_duration

__all__ = [
    "REQUIRED",
    "Check",
    "Document",
    "Key",
    "Located",
    "Reader",
    "ReferenceEntry",
    "Section",
    "Slot",
    "declared_keys",
    "read_list",
    "read_section",
    "sections",
    "subsection",
]

T = TypeVar("T")

# The metadata entry of a dataclass field that is a configuration key.
KEY: Final = "vmm_cert_exporter.config_key"


class _Required:
    """The default of a required key (``dataclasses.MISSING`` would read as no default)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final[Any] = _Required()


# systemd's directory of a unit's credentials (LoadCredential=), usable in any path
CREDENTIALS_VARIABLE: Final = "CREDENTIALS_DIRECTORY"
CREDENTIALS_PREFIXES: Final = (f"${CREDENTIALS_VARIABLE}/", f"${{{CREDENTIALS_VARIABLE}}}/")


@dataclass(frozen=True)
class Document:
    """The file being read: its name, where relative paths start, where secrets are found."""

    file: str
    base_dir: Path
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    # what a relative path is resolved from, in errors ("the configuration's directory")
    directory_name: str = "the configuration's directory"
    error: type[ConfigError] = ConfigError

    def fail(self, field: str, line: int | None, message: str) -> NoReturn:
        raise self.error(self.file, field, message, line)

    def fail_at(self, at: Located, message: str) -> NoReturn:
        raise self.error(self.file, at.path, message, at.line)

    def resolve(self, text: str) -> tuple[Path, str]:
        """``text`` as a path (``~`` expanded, relative to ``base_dir``) and a note for errors
        saying where a relative one was looked for (empty for an absolute one).

        A path starting with ``$CREDENTIALS_DIRECTORY/`` (or ``${CREDENTIALS_DIRECTORY}/``)
        is in the directory where systemd puts a unit's ``LoadCredential=`` files; no other
        variable is expanded."""
        for prefix in CREDENTIALS_PREFIXES:
            if text.startswith(prefix):
                directory = self.environ.get(CREDENTIALS_VARIABLE, "")
                if not directory:
                    return Path(text), (
                        f" (${CREDENTIALS_VARIABLE} is not set: systemd sets it for a unit "
                        "with LoadCredential=; outside one, give the file's own path)"
                    )
                return Path(directory) / text[len(prefix) :], (
                    f" (${CREDENTIALS_VARIABLE} is {directory})"
                )
        path = Path(text).expanduser()
        if path.is_absolute():
            return path, ""
        note = f" (relative paths are resolved from {self.directory_name} {self.base_dir})"
        return self.base_dir / path, note


@dataclass(frozen=True)
class Located:
    """A value and where it is: its field path and YAML line (``None`` value = absent)."""

    value: object
    path: str
    line: int | None


@dataclass(frozen=True)
class Slot:
    """What a reader is asked to read: a field, its YAML key(s) and its default."""

    name: str
    keys: tuple[str, ...]
    default: Any

    @property
    def key(self) -> str:
        return self.keys[0]

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


Reader = Callable[["Section", Slot], Any]
# A rule checked once the value is read: (section, where the key is, the value read).
Check = Callable[["Section", Located, Any], None]


@dataclass(frozen=True)
class Key:
    """One declared key: how it is read, and what the reference says about it."""

    read: Reader
    doc: str
    kind: str  # the type, as docs/configuration.md names it: string, integer, duration, ...
    # what the reference row must state: the range of a number or duration, each allowed word
    bounds: tuple[str, ...] = ()
    # the YAML keys, "{}" standing for the field name; one field may take two (secrets)
    names: tuple[str, ...] = ("{}",)
    # the YAML default, for a field the dataclass must keep without one (positional fields)
    default: Any = REQUIRED
    # a nested section: one mapping, or (repeated) a list of them
    section: type | None = None
    repeated: bool = False
    checks: tuple[Check, ...] = ()
    secret: bool = False  # its value is a secret read from {}_file or {}_env

    def metadata(self) -> dict[str, Key]:
        return {KEY: self}

    def yaml_keys(self, name: str) -> tuple[str, ...]:
        return tuple(pattern.replace("{}", name) for pattern in self.names)


def _declared(cls: type) -> list[tuple[dataclasses.Field[Any], Key]]:
    return [(f, f.metadata[KEY]) for f in dataclasses.fields(cls) if KEY in f.metadata]


def _default(field: dataclasses.Field[Any], key: Key) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return key.default


class Section:
    """One YAML mapping under validation; unknown keys are refused on construction.

    With ``cls`` (a declared section) the allowed keys are its declared ones and ``value``
    reads its fields; without, ``allowed`` lists them and the caller reads the values.
    """

    def __init__(
        self,
        document: Document,
        at: Located,
        allowed: Iterable[str] = (),
        *,
        cls: type | None = None,
        what: str = "key",
        null_ok: bool = True,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.document = document
        self.at = at
        self.cls = cls
        self._fields = {f.name: (f, key) for f, key in _declared(cls)} if cls else {}
        self._by_key = {n: name for name, (_, k) in self._fields.items() for n in k.yaml_keys(name)}
        self._values: dict[str, Any] = {}
        self._reading: set[str] = set()
        allowed = list(self._by_key) if cls else list(allowed)
        # `password:` where password_file/password_env belong: say how secrets are given.
        secrets = {
            name: key.yaml_keys(name) for name, (_, key) in self._fields.items() if key.secret
        }
        if at.value is None and null_ok:
            # `collection:` with nothing under it is YAML null: the same as leaving it out.
            self.data: Mapping[Any, Any] = {}
            return
        if not isinstance(at.value, dict):
            document.fail_at(at, f"expected a mapping, got {describe(at.value)}")
        self.data = at.value
        for key in self.data:
            if refused and key in refused:
                document.fail(self.child_path(key), self._key_line(key), refused[key])
            if isinstance(key, str) and key in allowed:
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                if key in secrets:
                    hint += "; secrets are never written in the file: use " + " or ".join(
                        secrets[key]
                    )
            # The value under an unknown key is never echoed: it may be a pasted secret.
            document.fail(
                self.child_path(key),
                self._key_line(key),
                f"unknown {what} {short(key)}{hint}; allowed: {', '.join(allowed)}",
            )

    def child_path(self, key: object) -> str:
        if self.at.path == FIELD_ROOT:
            return key_text(key)
        return f"{self.at.path}.{key_text(key)}"

    def _key_line(self, key: object) -> int | None:
        if isinstance(self.data, YamlMapping):
            return self.data.key_lines.get(key)
        return self.at.line

    def get(self, key: str) -> Located:
        line = None
        if isinstance(self.data, YamlMapping):
            line = self.data.value_lines.get(key)
        return Located(self.data.get(key), self.child_path(key), line if line else self.at.line)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def fail(self, key: str, message: str) -> NoReturn:
        """Fail on ``key`` of this section (present or not)."""
        self.document.fail_at(self.get(key), message)

    def value(self, name: str) -> Any:
        """The value of field ``name``, read (once) by its declaration."""
        if name in self._values:
            return self._values[name]
        if name in self._reading:
            raise RuntimeError(f"{name} of {self.cls} depends on itself")
        field, key = self._fields[name]
        slot = Slot(name, key.yaml_keys(name), _default(field, key))
        self._reading.add(name)
        try:
            value = key.read(self, slot)
            for check in key.checks:
                check(self, self.get(slot.key), value)
        finally:
            self._reading.discard(name)
        self._values[name] = value
        return value

    def values(self) -> dict[str, Any]:
        """Every declared field's value, read in declaration order."""
        return {name: self.value(name) for name in self._fields}


def read_section(
    document: Document, at: Located, cls: type[T], *, what: str = "key", null_ok: bool = True
) -> T:
    """An instance of the declared section ``cls`` from the mapping at ``at``."""
    section = Section(document, at, cls=cls, what=what, null_ok=null_ok)
    return cast(Callable[..., T], cls)(**section.values())


def subsection(
    cls: type, doc: str, *, required: str = "", checks: tuple[Check, ...] = ()
) -> dict[str, Key]:
    """A key holding a nested section: absent or null gives the field's default (``None``:
    the section is off), unless ``required`` (then it is the hint of the error)."""

    def read(section: Section, slot: Slot) -> object:
        at = section.get(slot.key)
        if at.value is None:
            if required:
                section.document.fail(at.path, None, f"required section is missing: {required}")
            return slot.default
        return read_section(section.document, at, cls, null_ok=False)

    return Key(read, doc, "mapping", section=cls, checks=checks).metadata()


def sections(cls: type, doc: str) -> dict[str, Key]:
    """A key holding a list of nested sections (absent: the field's default)."""

    def read(section: Section, slot: Slot) -> tuple[object, ...]:
        at = section.get(slot.key)
        if at.value is None:
            return cast(tuple[object, ...], slot.default)
        items = read_list(section.document, at)
        return tuple(read_section(section.document, i, cls, null_ok=False) for i in items)

    return Key(read, doc, "list", section=cls, repeated=True).metadata()


def read_list(document: Document, at: Located) -> list[Located]:
    """The items of the list at ``at`` (absent: none), each with its path and line."""
    if at.value is None:
        return []
    if not isinstance(at.value, list):
        document.fail_at(at, f"expected a list, got {describe(at.value)}")
    lines = at.value.item_lines if isinstance(at.value, YamlSequence) else []
    return [
        Located(item, f"{at.path}[{i}]", lines[i] if i < len(lines) else at.line)
        for i, item in enumerate(at.value)
    ]


# --------------------------------------------------------------------------------------------
# The reference: every declared key, for docs/configuration.md and its test


@dataclass(frozen=True)
class ReferenceEntry:
    """One YAML key as the reference names it: ``path`` below its top-level ``section``
    (``basic_auth.username``, ``maintenance_windows[].start``)."""

    section: str
    path: str
    key: Key
    default: Any

    @property
    def kind(self) -> str:
        """The type of this YAML key: a secret is given as a file path or a variable name."""
        if self.key.secret:
            return "path" if self.path.endswith("_file") else "string"
        return self.key.kind

    @property
    def default_text(self) -> str | None:
        """The default as it would be written in YAML; None for a required or unset key."""
        value = self.default
        if value is REQUIRED or value is None:
            return None
        if self.key.kind == "duration":
            return format_duration(value)
        if isinstance(value, tuple):
            return yaml.safe_dump(list(value), default_flow_style=True, width=1 << 16).strip()
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def row(self) -> str:
        """A reference table row to start from: key, type, default, rules."""
        default = "—" if self.default_text is None else f"`{self.default_text}`"
        rules = "; ".join(filter(None, (", ".join(self.key.bounds), self.key.doc)))
        return f"| `{self.path}` | {self.kind} | {default} | {rules} |"


def declared_keys(cls: type) -> Iterator[ReferenceEntry]:
    """Every key below the top-level sections of ``cls``, depth first, in declared order."""
    for field, key in _declared(cls):
        if key.section is not None:
            yield from _keys_below(field.name, "", key.section)


def _keys_below(section: str, prefix: str, cls: type) -> Iterator[ReferenceEntry]:
    for field, key in _declared(cls):
        for name in key.yaml_keys(field.name):
            yield ReferenceEntry(section, prefix + name, key, _default(field, key))
        if key.section is not None:
            inner = f"{prefix}{field.name}{'[].' if key.repeated else '.'}"
            yield from _keys_below(section, inner, key.section)
