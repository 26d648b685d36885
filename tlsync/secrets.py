"""API keys: read from the environment or a 0600 config file, and scrubbed from all output.

Every key read through ``get_secret`` is remembered, and ``redact`` replaces it wherever it
appears (error messages, URLs, log lines). The CLI passes everything it prints through
``redact``, so a connector that forgets cannot leak a key into a terminal or a CI log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Literal, overload
from urllib.parse import quote, quote_plus, unquote

from .errors import TlsyncError

_KNOWN: set[str] = set()
_KNOWN_RE: re.Pattern[str] | None = None  # every spelling in _KNOWN, longest first, as one pattern
_QUERY_KEY = re.compile(r"((?:api_key|apikey|key|token|access_token)=)[^&\s\"']+", re.IGNORECASE)
# A URL's query string: signed CDN links carry credentials there (X-Amz-Credential, X-Amz-Signature).
_URL_QUERY = re.compile(r"((?:https?|s3|gs)://[^\s?#'\"<>]+)\?[^\s#'\"<>]*", re.IGNORECASE)


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


@overload
def get_secret(name: str, required: Literal[True] = True) -> str: ...
@overload
def get_secret(name: str, required: bool) -> str | None: ...


def get_secret(name: str, required: bool = True) -> str | None:
    """The value of ``name`` from the environment, else the config file (mode 0600).

    Surrounding whitespace is dropped (a key pasted from a Windows file ends in ``\\r``) and
    a key with a control character inside is refused: sent as a header it would make
    requests raise an error that quotes the header, escaped, past the redaction.
    """
    raw = os.environ.get(name) or _from_config(name)
    if raw:
        remember(raw)
        value = raw.strip()
        bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
        if bad is not None:
            raise TlsyncError(f"{name} contains a control character ({_describe(bad)}); "
                              f"copy the key again without line breaks or tabs")
        if value:
            remember(value)
            return value
    if required:
        raise TlsyncError(f"{name} is not set: export {name}=... or put it in {config_path()} (chmod 600)")
    return None


def _describe(char: str) -> str:
    return repr(char)[1:-1] if char.isascii() else f"U+{ord(char):04X}"


def spellings(value: str) -> set[str]:
    """Every form a key can take in a message: as is, escaped (repr, JSON), percent-encoded
    (in a URL), and base64 of ``key:`` / ``:key`` (HTTP Basic with the key as user or password)."""
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value)}
    for pair in (f"{value}:", f":{value}", value):
        encoded = base64.b64encode(pair.encode()).decode()
        forms |= {encoded, encoded.rstrip("=")}
    return {form for form in forms if len(form) >= 4}


def remember(value: str) -> None:
    """Add a value (in all its spellings) to the set that ``redact`` removes."""
    global _KNOWN_RE
    forms = spellings(value) if value and len(value) >= 4 else set()
    if not forms <= _KNOWN:
        _KNOWN.update(forms)
        # One pass over the text, not a str.replace per spelling: redact runs for every item
        # of a pull (its image URI), so with a key and its dozen spellings that was most of it.
        _KNOWN_RE = re.compile("|".join(re.escape(s) for s in sorted(_KNOWN, key=len, reverse=True)))


def redact(text: str) -> str:
    """Replace every known secret, and any ``api_key=...`` query value, with ``***``."""
    if _KNOWN_RE is not None:
        text = _KNOWN_RE.sub("***", text)
    # The case-blind query pattern costs 3 µs even on a URL it cannot match, and a pull redacts
    # every item's URI twice: most have no "=" at all.
    return _QUERY_KEY.sub(r"\1***", text) if "=" in text else text


def strip_queries(text: str) -> str:
    """``text`` with every URL's query string cut off, for messages that are stored.

    A skip reason or note lands in ``dataset.json`` and ``last-pull.json``, which people
    copy around; a signed image URL's query is a credential valid for hours.
    """
    return _URL_QUERY.sub(r"\1", text)


def for_storage(text: str) -> str:
    """What a stored message may hold: known keys redacted, URLs without their query."""
    return strip_queries(redact(text))


# Query parameters that sign a URL or carry a credential: AWS SigV4 and SigV2, GCS V2/V4,
# CloudFront, Azure SAS, and the usual token/key names. Matched case-insensitively.
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_SIGNING_NAMES = frozenset({
    "signature", "expires", "googleaccessid", "awsaccesskeyid", "policy", "key-pair-id",  # S3 V2, GCS V2, CloudFront
    "sig", "se", "sp", "sv", "st", "sr", "spr", "sip", "ss", "srt", "skoid", "sktid", "skt", "ske", "sks", "skv",
    "token", "access_token", "api_key", "apikey", "key", "auth", "authorization",
})


def _is_signing(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SIGNING_NAMES or lowered.startswith(_SIGNING_PREFIXES)


def stored_uri(uri: str) -> str:
    """``uri`` as an item keeps it: signing parameters dropped, everything else as it was.

    A signed S3/GCS/Azure link in ``items.jsonl`` would hand a credential valid for hours
    to anyone with a copy of the dataset. The bytes are already in the store (named by
    their sha256), so the signature is of no further use; the rest of the query (an
    image server's ``?id=7&size=full``) may identify the picture and is kept, as is any
    other URI untouched. A ``user:password@`` in the host goes too; known keys are
    redacted from what remains.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or ("?" not in rest and "@" not in rest):
        return redact(uri) if _KNOWN else uri
    # Plain string work, not urllib's parse/unparse: this runs for every item of a signed slice,
    # and the kept parameters stay exactly as the platform encoded them.
    rest, hash_, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    host, slash, path = rest.partition("/")
    host = host.rpartition("@")[2]  # user:password@ is a credential too
    query = "&".join(p for p in query.split("&") if p and not _is_signing(unquote(p.partition("=")[0])))
    text = f"{scheme}://{host}{slash}{path}{'?' if query else ''}{query}{hash_}{fragment}"
    return redact(text) if _KNOWN else text
