"""VMM's display strings by language: what ``RoleString`` and ``StateString`` show.

``Role`` and ``State`` as ``[string]`` are invariant enum names; only these display strings
change with the VMM server's language. The Japanese ones come from a real ja-JP VMM 2022
(``../shared/domain/vmm-as-it-answers.md``), except ``アクセス拒否`` (AccessDenied), which no
recording shows (unverified). docs/lab-scenarios.md lists them.
"""

from __future__ import annotations

EN_US = "en-US"
JA_JP = "ja-JP"
LOCALES = (EN_US, JA_JP)

# Role flags in the order .NET prints a flags enum (ascending value): "Library, VMMServerRole"
ROLE_HOST = "Host"
ROLE_LIBRARY = "Library"
ROLE_VMM_SERVER = "VMMServerRole"

STATE_RESPONDING = "Responding"
STATE_NOT_RESPONDING = "NotResponding"
STATE_ACCESS_DENIED = "AccessDenied"
STATES = (STATE_RESPONDING, STATE_NOT_RESPONDING, STATE_ACCESS_DENIED)

_ROLE_FLAGS = {
    EN_US: {ROLE_HOST: "Host", ROLE_LIBRARY: "Library", ROLE_VMM_SERVER: "VMM Server"},
    JA_JP: {ROLE_HOST: "ホスト", ROLE_LIBRARY: "ライブラリ", ROLE_VMM_SERVER: "VMM サーバー"},
}
_STATES = {
    EN_US: {
        STATE_RESPONDING: "Responding",
        STATE_NOT_RESPONDING: "Not Responding",
        STATE_ACCESS_DENIED: "Access Denied",
    },
    JA_JP: {
        STATE_RESPONDING: "稼働中",
        STATE_NOT_RESPONDING: "応答なし",
        STATE_ACCESS_DENIED: "アクセス拒否",
    },
}


def parse_locale(value: object) -> str:
    """The canonical spelling of a supported locale; culture names ignore case, as .NET's."""
    if isinstance(value, str):
        for name in LOCALES:
            if value.strip().lower() == name.lower():
                return name
    raise ValueError(f"expected a locale, one of {', '.join(LOCALES)}, got {value!r}")


def role_text(flags: tuple[str, ...]) -> str:
    """``[string]$_.Role``: the invariant flag names joined as .NET joins them."""
    return ", ".join(flags)


def role_display(flags: tuple[str, ...], locale: str) -> str:
    """``RoleString``: each flag's display name, joined the same way."""
    table = _ROLE_FLAGS[locale]
    return ", ".join(table[flag] for flag in flags)


def state_display(state: str, locale: str) -> str:
    """``StateString`` of an invariant ``State`` name."""
    return _STATES[locale][state]
