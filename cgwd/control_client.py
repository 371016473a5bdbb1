"""The blocking client of the control protocol (cgwctl's side): one request per call.

Kept apart from the asyncio server in :mod:`cgwd.control` so that ``cgwctl status`` loads
no event loop machinery: the command's own start-up is most of what an operator waits for.
"""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

from .paths import DEFAULT_SOCKET

__all__ = ["ControlClient", "ControlUnavailable", "dumps_line"]


class ControlUnavailable(Exception):
    """The daemon cannot be reached (not running, no permission, no answer)."""


def dumps_line(obj: Any) -> bytes:
    """One message of the protocol: compact JSON and a newline."""
    return (json.dumps(obj, default=str, separators=(",", ":")) + "\n").encode()


class ControlClient:
    """Blocking client for cgwctl (one request per call)."""

    def __init__(self, path: str = DEFAULT_SOCKET):
        self.path = path

    def request(self, req: dict, timeout: float = 10.0) -> dict:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            try:
                s.connect(self.path)
            except FileNotFoundError:
                raise ControlUnavailable(f"cgwd is not running (no socket at {self.path})") from None
            except PermissionError:
                raise ControlUnavailable(f"permission denied on {self.path}: run cgwctl as root (or the user cgwd runs as)") from None
            except ConnectionRefusedError:
                raise ControlUnavailable(f"cgwd is not running (stale socket at {self.path})") from None
            except socket.timeout:
                raise ControlUnavailable(f"cgwd did not accept the connection on {self.path} within {timeout:g} s") from None
            except OSError as e:
                if e.errno == errno.ENOTSOCK or e.errno == errno.ENOTDIR:
                    raise ControlUnavailable(f"cgwd is not running ({self.path} is not a socket)") from None
                raise ControlUnavailable(f"cannot connect to {self.path}: {e.strerror}") from None
            try:
                s.sendall(dumps_line(req))
                buf = bytearray()
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except socket.timeout:
                raise ControlUnavailable(f"cgwd did not answer within {timeout:g} s") from None
            except OSError as e:
                raise ControlUnavailable(f"connection to cgwd failed: {e.strerror or e}") from None
        finally:
            s.close()
        if not buf:
            raise ControlUnavailable("cgwd closed the connection without answering")
        try:
            resp = json.loads(buf.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ControlUnavailable("cgwd sent a malformed answer") from None
        if not isinstance(resp, dict):
            raise ControlUnavailable("cgwd sent a malformed answer")
        return resp
