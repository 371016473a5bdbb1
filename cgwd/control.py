"""The control protocol: newline-delimited JSON over a Unix socket.

Request ``{"cmd": "status"}`` -> response ``{"ok": true, "status": {...}}``.
Commands: ``status``, ``up``/``down``/``rekey`` (with ``"tunnel": NAME``; ``rekey`` takes
``"sa": "ipsec"`` (default) or ``"ike"``), ``reload``.
Errors: ``{"ok": false, "error": "one line"}``.

The server checks the shape of each request before calling the handler, bounds the
request size, and never lets a bad client or a failing handler take it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from typing import Any, Awaitable, Callable

from .paths import DEFAULT_SOCKET

__all__ = [
    "COMMANDS",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ControlUnavailable",
    "MAX_REQUEST",
]

log = logging.getLogger("cgwd.control")

MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT = 60.0
COMMANDS = {"status": False, "up": True, "down": True, "rekey": True, "reload": False}  # cmd -> needs tunnel

Handler = Callable[[dict], Awaitable[dict]]


class ControlError(Exception):
    """The server could not be started (one line, for the operator)."""


class ControlUnavailable(Exception):
    """The daemon cannot be reached (not running, no permission, no answer)."""


def validate_request(req: Any) -> str | None:
    """None if ``req`` is a well-formed request, else the error message."""
    if not isinstance(req, dict):
        return "request must be a JSON object like {\"cmd\": \"status\"}"
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        return "request has no \"cmd\" string"
    if cmd not in COMMANDS:
        return f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})"
    if COMMANDS[cmd]:
        t = req.get("tunnel")
        if not isinstance(t, str) or not t:
            return f"{cmd} needs \"tunnel\": NAME"
    if cmd == "rekey" and req.get("sa", "ipsec") not in ("ipsec", "ike"):
        return "rekey: \"sa\" is \"ipsec\" (default) or \"ike\""
    return None


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, default=str, separators=(",", ":")) + "\n").encode()


class ControlServer:
    """asyncio Unix-socket server calling ``handler(request) -> response`` per line."""

    def __init__(self, path: str = DEFAULT_SOCKET, handler: Handler | None = None, *, max_request: int = MAX_REQUEST):
        self.path = path
        self.handler = handler
        self.max_request = max_request
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        parent = os.path.dirname(self.path) or "."
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ControlError(f"cannot create {parent}: {e.strerror}") from None
        self._remove_stale()
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path, limit=self.max_request)
        except OSError as e:
            raise ControlError(f"cannot listen on {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.debug("control socket listening on %s", self.path)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            s.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError, socket.timeout, OSError):
            os.unlink(self.path)  # stale: nobody listens
            return
        finally:
            s.close()
        raise ControlError(f"another cgwd is already listening on {self.path}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def __aenter__(self) -> "ControlServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT)
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        await self._answer(writer, e.partial)
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_dumps({"ok": False, "error": f"request too large (limit {self.max_request} bytes)"}))
                    await writer.drain()
                    return
                except (asyncio.TimeoutError, ConnectionError):
                    return
                if not line.strip():
                    continue
                await self._answer(writer, line)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # never take the daemon down because of one client
            log.exception("control connection failed")
        finally:
            if task is not None:
                self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        resp = await self.dispatch(line)
        writer.write(_dumps(resp))
        await writer.drain()

    async def dispatch(self, line: bytes) -> dict:
        if len(line) > self.max_request:
            return {"ok": False, "error": f"request too large (limit {self.max_request} bytes)"}
        try:
            req = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return {"ok": False, "error": f"malformed request: not JSON ({getattr(e, 'msg', 'bad UTF-8')})"}
        problem = validate_request(req)
        if problem:
            return {"ok": False, "error": problem}
        if self.handler is None:
            return {"ok": False, "error": "no handler"}
        try:
            resp = await self.handler(req)
        except Exception as e:
            log.exception("control command %r failed", req.get("cmd"))
            return {"ok": False, "error": f"internal error in {req['cmd']}: {type(e).__name__}"}
        if not isinstance(resp, dict):
            return {"ok": False, "error": f"internal error in {req['cmd']}: bad handler response"}
        resp.setdefault("ok", True)
        return resp


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
                s.sendall(_dumps(req))
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

    async def arequest(self, req: dict, timeout: float = 10.0) -> dict:
        """The same from asyncio code (runs the blocking call in a thread)."""
        return await asyncio.to_thread(self.request, req, timeout)
