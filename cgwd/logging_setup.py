"""Logging to journald's native protocol or to stderr, with secrets scrubbed.

* Under systemd (``$JOURNAL_STREAM`` names stderr) and with journald's socket present, each
  record is one datagram in journald's native protocol (:class:`JournalHandler`, stdlib
  only) with structured fields: ``PRIORITY``, ``SYSLOG_IDENTIFIER=cgwd``, ``LOGGER``,
  ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` and one field per key of :data:`KV_FIELDS`
  (``TUNNEL=``, ``EVENT=``, ...), so ``journalctl -u cgwd TUNNEL=f60718-1`` filters. If a
  datagram cannot be sent (journald gone, its queue full) that record goes to stderr.
* Otherwise text on stderr: under systemd without the socket each line starts with the
  sd-daemon level prefix (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug) and
  carries no timestamp (journald adds one); elsewhere ``2024-01-01 12:00:00 INFO cgwd.ike: ...``.
* ``extra={"tunnel": "tun1", "event": "ike_up"}`` (or any of KV_FIELDS) is appended as
  ``tunnel=tun1 event=ike_up``; the same keys written into the message text
  (``"tunnel=%s event=ike-up"``, as the daemon logs) become journal fields too.
* :class:`RedactingFilter` replaces every registered secret (``register_secret``) in the
  final text with ``<redacted>`` — defence in depth, the code should never log one.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
import threading

__all__ = ["RedactingFilter", "JournalHandler", "register_secret", "setup_logging", "journal_fields",
           "encode_journal", "KV_FIELDS", "REDACTED", "JOURNAL_SOCKET"]

REDACTED = "<redacted>"
KV_FIELDS = ("tunnel", "vpn", "event", "peer", "spi", "state", "reason")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_LEVEL_PREFIX = {lvl: f"<{p}>" for lvl, p in _SYSLOG_PRIORITY.items()}
# key=value (or key="quoted value") of the KV_FIELDS keys inside a message's text
_KV_IN_TEXT = re.compile(r'(?<![\w.-])(' + "|".join(KV_FIELDS) + r')=("(?:[^"\\]|\\.)*"|[^\s,;()\[\]]+)')

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
    """``journal``: no timestamp (journald adds one); ``prefix``: with it, each line starts
    with the sd-daemon level prefix (text to a journal stream; the native protocol carries
    PRIORITY= instead)."""

    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s.%03d"  # milliseconds: a rekey's install and switch sit ms apart

    def __init__(self, journal: bool, prefix: bool = True):
        self.journal = journal
        self.prefix = prefix
        super().__init__("%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        kv = " ".join(f"{k}={_kv_value(getattr(record, k))}" for k in KV_FIELDS if getattr(record, k, None) is not None)
        if kv:
            first, nl, rest = text.partition("\n")
            text = f"{first} {kv}{nl}{rest}"
        text = redact(text)
        if self.journal and self.prefix:
            prefix = _LEVEL_PREFIX.get(record.levelno, "<6>")
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v[1:-1])
    return v


def journal_fields(record: logging.LogRecord, message: str) -> list[tuple[str, str]]:
    """journald fields for ``record`` whose final (already redacted) text is ``message``.

    The KV_FIELDS come from the record's ``extra`` first, else from ``key=value`` in the
    message text (the first one of each key). Values are redacted again: nothing that
    :func:`register_secret` knows reaches the journal."""
    fields = [("MESSAGE", message), ("PRIORITY", str(_SYSLOG_PRIORITY.get(record.levelno, 6))),
              ("SYSLOG_IDENTIFIER", "cgwd"), ("LOGGER", record.name), ("CODE_FILE", record.pathname),
              ("CODE_LINE", str(record.lineno)), ("CODE_FUNC", record.funcName),
              ("SYSLOG_PID", str(os.getpid()))]
    seen: dict[str, str] = {}
    for k in KV_FIELDS:
        v = getattr(record, k, None)
        if v is not None:
            seen[k] = str(v)
    for m in _KV_IN_TEXT.finditer(message.partition("\n")[0]):
        seen.setdefault(m.group(1), _unquote(m.group(2)))
    fields += [(k.upper(), redact(seen[k])) for k in KV_FIELDS if k in seen and seen[k]]
    return fields


def encode_journal(fields: list[tuple[str, str]]) -> bytes:
    """journald's native protocol: ``KEY=value\\n``, or for a value with a newline
    ``KEY\\n`` + its length as 64-bit little endian + the value + ``\\n``."""
    out = bytearray()
    for k, v in fields:
        b = v.encode("utf-8", "replace")
        if b"\n" in b:
            out += k.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n"
        else:
            out += k.encode() + b"=" + b + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Each record as one datagram to journald's socket (native protocol).

    Non-blocking: a full queue or a missing journald sends the record to ``fallback``
    (a handler writing text to stderr) instead of stalling the event loop. A datagram too
    large for the socket goes in a sealed memfd, as sd_journal_send() does."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: logging.Handler | None = None):
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.sent = 0
        self.fell_back = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_journal(journal_fields(record, self.format(record)))
            self._send(data)
            self.sent += 1
        except Exception:  # noqa: BLE001 - logging must never raise into the daemon
            self.fell_back += 1
            if self.fallback is not None:
                self.fallback.handle(record)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            fd = os.memfd_create("cgwd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.write(fd, data)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                            | fcntl.F_SEAL_SEAL)
                # socket.send_fds() ignores its address argument (CPython 3.11): sendmsg itself
                self.sock.sendmsg([b""], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.sock.close()
        super().close()


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


def setup_logging(level: str = "info", stream=None, journal: bool | None = None,
                  journal_socket: str | None = None) -> logging.Logger:
    """Configure the ``cgwd`` logger hierarchy (idempotent).  Returns the ``cgwd`` logger.

    ``journal`` None: detected (``$JOURNAL_STREAM`` names ``stream``), and then records go
    to journald's native socket when it exists. ``journal_socket``: send there (native
    protocol) whatever was detected, with text on ``stream`` as the fallback."""
    stream = sys.stderr if stream is None else stream
    lvl = getattr(logging, str(level).upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    if journal is None:
        journal = _under_journal(stream)
        if journal and journal_socket is None and os.path.exists(JOURNAL_SOCKET):
            journal_socket = JOURNAL_SOCKET
    logger = logging.getLogger("cgwd")
    for h in list(logger.handlers):
        if getattr(h, "_cgwd", False):
            logger.removeHandler(h)
            h.close()
    text = logging.StreamHandler(stream)
    text.setFormatter(CgwdFormatter(journal or journal_socket is not None))
    text.addFilter(RedactingFilter())
    h: logging.Handler = text
    if journal_socket is not None:
        h = JournalHandler(journal_socket, fallback=text)
        h.setFormatter(CgwdFormatter(journal=True, prefix=False))
        h.addFilter(RedactingFilter())
    h._cgwd = True  # type: ignore[attr-defined]
    logger.addHandler(h)
    logger.setLevel(lvl)
    logger.propagate = False
    return logger
