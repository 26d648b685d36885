"""API keys: read from the environment or a 0600 config file, and scrubbed from all output.

Every key read through ``get_secret`` is remembered, and ``redact`` replaces it wherever it
appears (error messages, URLs, log lines). The CLI passes everything it prints through
``redact``, so a connector that forgets cannot leak a key into a terminal or a CI log.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from .errors import TlsyncError

_KNOWN: set[str] = set()
_QUERY_KEY = re.compile(r"((?:api_key|apikey|key|token|access_token)=)[^&\s\"']+", re.IGNORECASE)


def config_path() -> Path:
    env = os.environ.get("TLSYNC_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("tlsync", appauthor=False)) / "config.json"


def _from_config(name: str) -> str | None:
    path = config_path()
    if not path.exists():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TlsyncError(f"{path}: holds API keys but is readable by others (mode {mode:o}); run: chmod 600 {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TlsyncError(f"{path}: not valid JSON ({e.msg})") from None
    value = data.get(name)
    return str(value) if value else None


def get_secret(name: str, required: bool = True) -> str | None:
    """The value of ``name`` from the environment, else the config file (mode 0600)."""
    value = os.environ.get(name) or _from_config(name)
    if value:
        remember(value)
        return value
    if required:
        raise TlsyncError(f"{name} is not set: export {name}=... or put it in {config_path()} (chmod 600)")
    return None


def remember(value: str) -> None:
    """Add a value to the set that ``redact`` removes (for keys passed as options)."""
    if value and len(value) >= 4:
        _KNOWN.add(value)


def redact(text: str) -> str:
    """Replace every known secret, and any ``api_key=...`` query value, with ``***``."""
    for secret in sorted(_KNOWN, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _QUERY_KEY.sub(r"\1***", text)
