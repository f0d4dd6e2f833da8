"""Credentials out of every URL autoopt stores, logs or prints.

A storage URL (``postgresql://user:password@host/db``), a tracking URI
(``http://user:password@mlflow:5000``) or a Ray address may carry a secret. autoopt keeps the full
URL only in the memory of the processes that connect with it; what it writes anywhere (Optuna
study attributes, MLflow params and artifacts, warnings, CLI output) is :func:`redact` ed.
A redacted URL read back (``autoopt resume``, ``autoopt report``) is reconnected with
:func:`restore`, which takes the full URL from the user's own settings, never from storage.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
#: Query parameters that carry secrets (libpq ``password=``, tokens, keys).
_SECRET_KEYS = re.compile(r"pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|auth|credential", re.I)
#: ``scheme://user:password@`` anywhere in a text (error messages, warnings).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]*)@")


def redact(url: str | None) -> str | None:
    """``url`` with the password of its user info and any secret query parameter replaced by ``***``."""
    if not url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    out = url
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        if ":" in userinfo:
            head, _, tail = url.partition("://")
            out = f"{head}://{userinfo.split(':', 1)[0]}:{MASK}@{host}{tail[len(parts.netloc):]}"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_KEYS.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
            out = out.replace(f"?{parts.query}", f"?{query}", 1)
    return out


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in a free text with the password replaced."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def is_redacted(url: str | None) -> bool:
    return bool(url) and redact(url) == url and MASK in url


def restore(url: str | None, candidates: Iterable[str | None]) -> str | None:
    """The full URL behind a redacted one: the first candidate (the user's flags and environment)
    that redacts to it. ``url`` itself when it carries no redacted secret or none matches."""
    if not is_redacted(url):
        return url
    for candidate in candidates:
        if candidate and candidate != url and redact(candidate) == url:
            return candidate
    return url


__all__ = ["MASK", "is_redacted", "redact", "redact_text", "restore"]
