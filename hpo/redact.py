"""Keep passwords out of everything shown to a person: URLs, error lines, logs and reports.

A storage URL can carry a password in its userinfo (``postgresql://bob:pw@host/db``, where the
password may itself hold an unescaped ``@``, ``:``, ``/`` or ``?``) or as a query parameter
(``?password=pw``, also ``passwd``, ``pwd`` and ``pass``, in any case). Driver and SQLAlchemy
messages can repeat any part of it: a host name made of the password's tail when an ``@`` was not
escaped, or a connection string with ``password=pw``. Both helpers here fail safe: when a URL is
malformed they hide too much rather than too little.

``hpo.storage`` re-exports them; this module imports nothing of hpo, so ``hpo.rdb`` can use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact_any", "redact_text", "redact_url"]

_MASK = "***"
_SECRET_KEYS = r"(?:password|passwd|pwd|pass)"
# A secret query parameter of a URL: its value runs to the next parameter (or the end).
_QUERY_SECRET_RE = re.compile(rf"(?i)([?&;]{_SECRET_KEYS}=)[^&;#]*")
# A secret `key=value` in free text (a driver's connection string, a logged URL).
_TEXT_SECRET_RE = re.compile(rf"(?i)(\b{_SECRET_KEYS}\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,'\")]+)")
# A URL's userinfo in free text, up to its last "@" on that run of non-blank characters.
_TEXT_USERINFO_RE = re.compile(r"(://[^:/@\s]*:)\S*@")


def redact_url(url: str) -> str:
    """Return ``url`` with every password in it replaced by ``***``.

    The userinfo password runs from the first ``:`` after the scheme to the URL's last ``@``,
    so a password holding ``@``, ``:`` or ``/`` is hidden whole; ``password=``, ``passwd=``,
    ``pwd=`` and ``pass=`` query parameters are hidden in any case. A URL without ``://``
    (malformed) is read the same way from its start.

    Example:
        >>> redact_url("postgresql+psycopg://bob:s3cret@db:5432/hpo")
        'postgresql+psycopg://bob:***@db:5432/hpo'
        >>> redact_url("postgresql+psycopg://bob@db/hpo?sslmode=disable&Password=s3cret")
        'postgresql+psycopg://bob@db/hpo?sslmode=disable&Password=***'
    """
    url = _QUERY_SECRET_RE.sub(rf"\1{_MASK}", url)
    span = _userinfo_password_span(url)
    if span is None:
        return url
    start, end = span
    return url[:start] + _MASK + url[end:]


def redact_text(text: str, url: str) -> str:
    """Remove the passwords of ``url``, and any URL- or ``password=``-shaped secret, from ``text``.

    For messages of drivers and SQLAlchemy about ``url``: they may quote the password, part of
    it (a host name made of its tail when an ``@`` in it was not escaped), or a decoded form.
    """
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return redact_any(text)


def redact_any(text: str) -> str:
    """Hide URL userinfo passwords and ``password=...`` pairs in ``text`` (no URL known)."""
    text = _TEXT_USERINFO_RE.sub(rf"\1{_MASK}@", text)
    return _TEXT_SECRET_RE.sub(rf"\1{_MASK}", text)


def _userinfo_password_span(url: str) -> tuple[int, int] | None:
    """Where the userinfo password of ``url`` is: from the first ``:`` after the scheme (or
    the start) to the last ``@``; None when there is no ``@`` or no ``:`` before it."""
    at = url.rfind("@")
    if at == -1:
        return None
    scheme_end = url.find("://")
    start = scheme_end + 3 if 0 <= scheme_end < at else 0
    colon = url.find(":", start, at)
    if colon == -1:
        return None
    return colon + 1, at


def _secrets(url: str) -> set[str]:
    """Every form in which a password of ``url`` may appear in a message."""
    found: set[str] = set()
    redacted = _QUERY_SECRET_RE.sub("", url)
    span = _userinfo_password_span(redacted)
    if span is not None:
        password = redacted[span[0] : span[1]]
        found.add(password)
        # SQLAlchemy splits an unescaped "@" or ":" differently: each piece may be quoted.
        found.update(piece for piece in re.split(r"[@:/?]", password) if len(piece) >= 2)
    for match in _QUERY_SECRET_RE.finditer(url):
        found.add(match.group(0)[len(match.group(1)) :])
    try:
        import sqlalchemy.engine

        parsed = sqlalchemy.engine.make_url(url).password
        if parsed:
            found.add(str(parsed))
    except Exception:  # a malformed URL: the forms above cover it
        pass
    found |= {unquote(s) for s in found}
    return {s for s in found if s}
