"""Secrets (passwords, tokens): read from a file or the environment, never shown.

A ``Secret`` keeps its value out of ``repr``/``str``/``format``, so a secret that ends up in a
log line, an exception or a dataclass repr prints as ``********``. The only way to the value
is ``reveal()``, which makes every use of it easy to find with grep.

Error messages here name neither the value NOR the file path or variable name they were
given: the commonest mistake is pasting the secret itself where its path or variable name
belongs, and the error would then print it. Callers say which setting was wrong (the
configuration names the field and line).
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "MAX_SECRET_BYTES",
    "Secret",
    "SecretError",
    "is_env_var_name",
    "read_secret_env",
    "read_secret_file",
    "warn_if_readable_by_others",
]

log = logging.getLogger(__name__)

REDACTED: Final = "********"

# A password or token file is tiny; refusing big files keeps a wrong path (a log, a disk
# image) from being read into memory.
MAX_SECRET_BYTES: Final = 64 * 1024

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretError(ValueError):
    """A secret could not be read. The message is a predicate ("does not exist") to follow the
    caller's own subject ("password file"); it never contains the value, path or name given."""


class Secret:
    """A string that does not print itself. ``reveal()`` returns the value."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str = "inline") -> None:
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        self._value = value
        self._source = source

    def reveal(self) -> str:
        return self._value

    @property
    def source(self) -> str:
        """Where the value came from (``file /run/secrets/x`` or ``env WINRM_PASSWORD``)."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r}, source={self._source!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        # object.__format__ would use __str__ for "" but raise for any other spec; redact always.
        return format(REDACTED, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing secrets cannot leak their prefix through timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        # Equal secrets must hash alike (frozen dataclasses holding a Secret are hashable).
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the value somewhere (a cache, a multiprocessing queue): refuse.
        raise TypeError("a Secret cannot be pickled")

    # Immutable, so copies can be the object itself; also keeps dataclasses.asdict() working,
    # which deep-copies field values and would otherwise reach __reduce__.
    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self


def is_env_var_name(name: str) -> bool:
    """True for a portable environment variable name (letters, digits, underscore)."""
    return _ENV_NAME_RE.fullmatch(name) is not None


def read_secret_env(name: str, environ: Mapping[str, str] | None = None) -> Secret:
    """Read a secret from environment variable ``name``; it must be set and non-empty."""
    if not is_env_var_name(name):
        # Not echoing the name: someone may have pasted the password itself here.
        raise SecretError(
            "is not the name of an environment variable (letters, digits and underscores, "
            "not starting with a digit)"
        )
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None:
        raise SecretError("is not set in the environment")
    if value == "":
        raise SecretError("is set in the environment but empty")
    return Secret(value, source=f"env {name}")


def read_secret_file(path: str | os.PathLike[str]) -> Secret:
    """Read a secret file: UTF-8, at most ``MAX_SECRET_BYTES``, one trailing newline removed.

    Only ONE trailing ``\\n`` (or ``\\r\\n``) is removed, because ``echo pw > file`` adds one
    and anything else (spaces, a second newline) may be part of the secret. Warns (without the
    value) when the file is readable by group or others.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO given by mistake must not hang the process; the fstat
        # below then refuses anything that is not a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SecretError(_describe_os_error(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError("is not a regular file")
        if st.st_size > MAX_SECRET_BYTES:
            raise SecretError(f"is larger than {MAX_SECRET_BYTES} bytes: not a secret file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise SecretError(_describe_os_error(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"is larger than {MAX_SECRET_BYTES} bytes: not a secret file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # `from None`: the UnicodeDecodeError's own message quotes the offending bytes.
        raise SecretError("is not valid UTF-8") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if text == "":
        raise SecretError("is empty")
    warn_if_readable_by_others(path, st.st_mode)
    return Secret(text, source=f"file {path}")


def warn_if_readable_by_others(path: str | os.PathLike[str], mode: int | None = None) -> bool:
    """Log a warning when ``path`` is readable by its group or by others; return whether so."""
    if mode is None:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "secret file %s is readable by group or others (mode %s); restrict it with chmod 600",
            os.fspath(path),
            f"{stat.S_IMODE(mode):04o}",
        )
        return True
    return False


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "does not exist"
    if exc.errno == errno.EACCES:
        return "is not readable by this process (permission denied)"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a file"
    if exc.errno == errno.ENOTDIR:
        return "does not exist (a parent is not a directory)"
    return f"cannot be read: {exc.strerror or exc.__class__.__name__}"
