"""The lab's JSON control API, served under ``/lab/`` on the WinRM port.

Tests and the demo read the model and change it while the lab runs (clock, computers, faults,
certificates). It is unauthenticated on purpose — the lab only ever listens on loopback — and
is documented in ``docs/lab.md``. Routing is a pure function so it is testable without HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from vmm_cert_lab.fleet.interfaces import Faults, FleetModel

JSON = Any


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ControlError(400, "body must be a JSON object")
    return data


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{key} must be a number of seconds, got {value!r}")
    return float(value)


def handle_control(
    model: FleetModel,
    stats: Callable[[], dict[str, Any]],
    method: str,
    path: str,
    body: bytes,
) -> tuple[int, JSON]:
    """Route one control request; returns (HTTP status, JSON-able answer).

    The model's KeyError (unknown computer) becomes 404 and its ValueError (bad input) 400,
    both as ``{"error": "..."}``.
    """
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
    if not parts or parts[0] != "lab":
        raise ControlError(404, f"no such control resource: {path}")
    parts = parts[1:]
    try:
        return _route(model, stats, method, parts, body)
    except ControlError:
        raise
    except KeyError as exc:
        raise ControlError(404, f"not found: {exc.args[0] if exc.args else exc}") from exc
    except ValueError as exc:
        raise ControlError(400, str(exc)) from exc


def _route(
    model: FleetModel,
    stats: Callable[[], dict[str, Any]],
    method: str,
    parts: list[str],
    body: bytes,
) -> tuple[int, JSON]:
    if parts == ["health"] and method == "GET":
        return 200, {"status": "ok"}
    if parts == ["stats"] and method == "GET":
        return 200, stats()
    if parts == ["clock"]:
        if method == "GET":
            return 200, model.clock_info()
        if method == "POST":
            data = _json_body(body)
            offset, advance = _number(data, "offset_seconds"), _number(data, "advance_seconds")
            if offset is None and advance is None:
                raise ControlError(400, "give offset_seconds or advance_seconds")
            model.set_clock(offset_seconds=offset, advance_seconds=advance)
            return 200, model.clock_info()
    if parts == ["computers"]:
        if method == "GET":
            return 200, model.list_computers()
        if method == "POST":
            return 201, model.add_computer(_json_body(body))
    if len(parts) >= 2 and parts[0] == "computers":
        fqdn, rest = parts[1], parts[2:]
        if not rest:
            if method == "GET":
                return 200, model.describe(fqdn)
            if method == "DELETE":
                model.remove_computer(fqdn)
                return 200, {"removed": fqdn}
        elif rest == ["faults"]:
            if not model.has_computer(fqdn):
                raise KeyError(fqdn)
            if method == "GET":
                return 200, model.faults(fqdn).to_dict()
            if method in ("PUT", "PATCH"):
                data = _json_body(body)
                base = model.faults(fqdn) if method == "PATCH" else None
                faults = Faults.from_dict(data, base=base)
                model.set_faults(fqdn, faults)
                return 200, faults.to_dict()
        elif rest == ["certificates"] and method == "DELETE":
            return 200, {"deleted": model.delete_certificates(fqdn)}
        elif rest == ["renew"] and method == "POST":
            return 200, model.renew(fqdn)
        elif rest == ["trusted-mismatch"] and method == "POST":
            model.set_trusted_mismatch(fqdn)
            return 200, {"trusted_mismatch": fqdn}
        else:
            raise ControlError(404, f"no such control resource: /lab/{'/'.join(parts)}")
    known = {"health", "stats", "clock", "computers"}
    if parts and parts[0] in known:
        raise ControlError(405, f"method {method} not allowed on /lab/{'/'.join(parts)}")
    raise ControlError(404, f"no such control resource: /lab/{'/'.join(parts)}")
