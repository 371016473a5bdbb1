"""Logging to stderr, journald-friendly, with secrets scrubbed.

* Under systemd (``$JOURNAL_STREAM`` set) each line starts with the sd-daemon level
  prefix (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug) and carries no
  timestamp (journald adds one); otherwise ``2024-01-01 12:00:00 INFO cgwd.ike: ...``.
* ``extra={"tunnel": "tun1", "event": "ike_up"}`` (or any of KV_FIELDS) is appended as
  ``tunnel=tun1 event=ike_up``.
* :class:`RedactingFilter` replaces every registered secret (``register_secret``) in the
  final text with ``<redacted>`` — defence in depth, the code should never log one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["RedactingFilter", "register_secret", "setup_logging", "KV_FIELDS", "REDACTED"]

REDACTED = "<redacted>"
KV_FIELDS = ("tunnel", "vpn", "event", "peer", "spi", "state", "reason")
_LEVEL_PREFIX = {logging.DEBUG: "<7>", logging.INFO: "<6>", logging.WARNING: "<4>", logging.ERROR: "<3>", logging.CRITICAL: "<2>"}

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(secret: bytes | str) -> None:
    """Remember a secret (PSK) so that it is scrubbed from every log record."""
    if isinstance(secret, (bytes, bytearray)):
        forms = {bytes(secret).hex()}
        try:
            forms.add(bytes(secret).decode("utf-8"))
        except UnicodeDecodeError:
            pass
        forms.add(repr(bytes(secret))[2:-1])
    else:
        forms = {secret, secret.encode("utf-8").hex()}
    with _lock:
        _secrets.update(f for f in forms if len(f) >= 4)


def clear_secrets() -> None:
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            msg = str(record.msg)
        record.msg = redact(msg)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        for k in KV_FIELDS:
            v = getattr(record, k, None)
            if isinstance(v, str):
                setattr(record, k, redact(v))
        return True


def _kv_value(v: object) -> str:
    s = str(v)
    if not s or any(c.isspace() or c in '"=' for c in s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class CgwdFormatter(logging.Formatter):
    def __init__(self, journal: bool):
        self.journal = journal
        super().__init__("%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        kv = " ".join(f"{k}={_kv_value(getattr(record, k))}" for k in KV_FIELDS if getattr(record, k, None) is not None)
        if kv:
            first, nl, rest = text.partition("\n")
            text = f"{first} {kv}{nl}{rest}"
        text = redact(text)
        if self.journal:
            prefix = _LEVEL_PREFIX.get(record.levelno, "<6>")
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


def _under_journal(stream) -> bool:
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(stream.fileno())
        return st.st_dev == dev and st.st_ino == ino
    except (ValueError, OSError, AttributeError):
        return True  # set but unverifiable: trust it


def setup_logging(level: str = "info", stream=None, journal: bool | None = None) -> logging.Logger:
    """Configure the ``cgwd`` logger hierarchy (idempotent).  Returns the ``cgwd`` logger."""
    stream = sys.stderr if stream is None else stream
    lvl = getattr(logging, str(level).upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    if journal is None:
        journal = _under_journal(stream)
    logger = logging.getLogger("cgwd")
    for h in list(logger.handlers):
        if getattr(h, "_cgwd", False):
            logger.removeHandler(h)
    h = logging.StreamHandler(stream)
    h._cgwd = True  # type: ignore[attr-defined]
    h.setFormatter(CgwdFormatter(journal))
    h.addFilter(RedactingFilter())
    logger.addHandler(h)
    logger.setLevel(lvl)
    logger.propagate = False
    return logger
