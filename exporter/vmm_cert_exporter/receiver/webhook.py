"""Alertmanager's webhook payload (version 4), parsed strictly.

The first violation of the schema (docs/renewal.md, "How a webhook becomes a renewal") is
raised as ``PayloadError``, whose message names the field: the HTTP 400 body."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NoReturn

from vmm_cert_exporter.documents import STRICT_JSON as _DECODER
from vmm_cert_exporter.documents import json_kind as _kind

MAX_ALERTS: Final = 1000
MAX_LABELS: Final = 64
MAX_LABEL_VALUE: Final = 4096
MAX_STRING: Final = 64 * 1024
STATUSES: Final = ("firing", "resolved")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
# RFC 3339 as Go's time.Time marshals it (up to nanoseconds, Z or an offset).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)

_TOP_FIELDS: Final = (
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
)
_OPTIONAL_TOP: Final = frozenset({"truncatedAlerts"})
_ALERT_FIELDS: Final = (
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
)


class PayloadError(ValueError):
    """The body is not a valid Alertmanager v4 webhook; the message says where and why."""


@dataclass(frozen=True)
class WebhookAlert:
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str
    generator_url: str
    fingerprint: str

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]


@dataclass(frozen=True)
class WebhookPayload:
    version: str
    group_key: str
    truncated_alerts: int
    status: str
    receiver: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    common_annotations: Mapping[str, str]
    external_url: str
    alerts: tuple[WebhookAlert, ...]


def _fail(path: str, message: str) -> NoReturn:
    raise PayloadError(f"{path}: {message}" if path else message)


def _string(value: object, path: str, limit: int = MAX_STRING) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_kind(value)}")
    if len(value) > limit:
        _fail(path, f"longer than {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(path, "contains an unpaired UTF-16 surrogate (not valid Unicode text)")
    return value


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, f"expected an object, got {_kind(value)}")
    return value


def _fields(
    obj: dict[str, Any], path: str, fields: tuple[str, ...], optional: frozenset[str]
) -> None:
    for key in obj:
        if key not in fields:
            shown = key if len(key) <= 40 else key[:40] + "..."
            _fail(path, f"unknown field {shown!r} (Alertmanager webhook version 4 has none)")
    for key in fields:
        if key not in obj and key not in optional:
            _fail(path, f"missing field {key!r}")


def _labels(value: object, path: str, *, annotations: bool = False) -> dict[str, str]:
    obj = _object(value, path)
    if len(obj) > MAX_LABELS and not annotations:
        _fail(path, f"more than {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for name, item in obj.items():
        if not annotations and _LABEL_NAME.fullmatch(name) is None:
            shown = name if len(name) <= 40 else name[:40] + "..."
            _fail(path, f"{shown!r} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        key_path = f"{path}.{name[:40]}"
        _string(name, path, 1024)
        out[name] = _string(item, key_path, MAX_STRING if annotations else MAX_LABEL_VALUE)
    return out


def _time(value: object, path: str) -> str:
    text = _string(value, path, 64)
    match = _RFC3339.fullmatch(text)
    if match is None:
        _fail(path, f"expected an RFC 3339 time such as 2024-05-01T12:00:00Z, got {text!r}")
    # The fraction is dropped (Python reads microseconds only); the fields are checked for
    # range by datetime (month 13, Feb 30 ...).
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as exc:
        _fail(path, f"not a valid time: {exc}")
    return text


def _status(value: object, path: str) -> str:
    text = _string(value, path, 16)
    if text not in STATUSES:
        _fail(path, f"expected firing or resolved, got {text!r}")
    return text


def _alert(value: object, path: str) -> WebhookAlert:
    obj = _object(value, path)
    _fields(obj, path, _ALERT_FIELDS, frozenset())
    labels = _labels(obj["labels"], f"{path}.labels")
    if not labels.get("alertname"):
        _fail(f"{path}.labels", "missing the alertname label")
    fingerprint = _string(obj["fingerprint"], f"{path}.fingerprint", 64)
    if _FINGERPRINT.fullmatch(fingerprint) is None:
        _fail(f"{path}.fingerprint", "expected 16 lower-case hexadecimal digits")
    return WebhookAlert(
        status=_status(obj["status"], f"{path}.status"),
        labels=labels,
        annotations=_labels(obj["annotations"], f"{path}.annotations", annotations=True),
        starts_at=_time(obj["startsAt"], f"{path}.startsAt"),
        ends_at=_time(obj["endsAt"], f"{path}.endsAt"),
        generator_url=_string(obj["generatorURL"], f"{path}.generatorURL"),
        fingerprint=fingerprint,
    )


def parse_webhook(body: bytes) -> WebhookPayload:
    """Parse and validate one webhook body; ``PayloadError`` on the first problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the body is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise PayloadError("the body is empty; expected a JSON object")
    try:
        value, end = _DECODER.raw_decode(text.lstrip())
    except json.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"not acceptable JSON: {str(exc)[:100]}") from None
    if text.lstrip()[end:].strip():
        raise PayloadError("more than one JSON document in the body")
    obj = _object(value, "")
    _fields(obj, "", _TOP_FIELDS, _OPTIONAL_TOP)
    version = _string(obj["version"], "version", 16)
    if version != "4":
        _fail("version", f'expected "4" (Alertmanager\'s webhook version), got {version!r}')
    truncated = obj.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        _fail("truncatedAlerts", f"expected a non-negative integer, got {_kind(truncated)}")
    raw_alerts = obj["alerts"]
    if not isinstance(raw_alerts, list):
        _fail("alerts", f"expected an array, got {_kind(raw_alerts)}")
    if not raw_alerts:
        _fail("alerts", "is empty: Alertmanager never sends a notification without alerts")
    if len(raw_alerts) > MAX_ALERTS:
        _fail("alerts", f"more than {MAX_ALERTS} alerts in one notification")
    alerts = tuple(_alert(item, f"alerts[{i}]") for i, item in enumerate(raw_alerts))
    status = _status(obj["status"], "status")
    firing = any(a.status == "firing" for a in alerts)
    if status == "firing" and not firing:
        _fail("status", "is firing but every alert is resolved")
    if status == "resolved" and firing:
        _fail("status", "is resolved but some alerts are firing")
    return WebhookPayload(
        version=version,
        group_key=_string(obj["groupKey"], "groupKey"),
        truncated_alerts=truncated,
        status=status,
        receiver=_string(obj["receiver"], "receiver", 1024),
        group_labels=_labels(obj["groupLabels"], "groupLabels"),
        common_labels=_labels(obj["commonLabels"], "commonLabels"),
        common_annotations=_labels(obj["commonAnnotations"], "commonAnnotations", annotations=True),
        external_url=_string(obj["externalURL"], "externalURL"),
        alerts=alerts,
    )
