"""Structured logs as Prometheus exporters write them: logfmt by default, or JSON.

Fields passed with ``extra=`` (host, operation, reason, ...) become key=value pairs, so a
failure line always names the computer, the operation and the reason.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' ="\\\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        pairs = {
            "ts": _ts(record),
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            pairs["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs.items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread becomes one structured error line (not a bare
    traceback on stderr), with the thread's name."""
    if args.exc_type is SystemExit:
        return
    logging.getLogger("vmm_cert_exporter").error(
        "uncaught exception in a thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        extra={"thread_name": args.thread.name if args.thread is not None else ""},
    )


def current_settings() -> tuple[str, str]:
    """The (level, format) ``setup_logging`` was last given: for a child process to log alike."""
    root = logging.getLogger()
    level = next((name for name, value in LEVELS.items() if value == root.level), "info")
    json_handler = any(isinstance(h.formatter, JSONFormatter) for h in root.handlers)
    return level, "json" if json_handler else "logfmt"


def setup_logging(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    threading.excepthook = _log_thread_exception
    # urllib3 and pywinrm debug lines can carry request bodies: keep them quiet
    for noisy in ("urllib3", "winrm", "requests_ntlm", "spnego", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
