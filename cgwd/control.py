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
import json
import logging
import os
import socket
import stat
from typing import Any, Awaitable, Callable

from .control_client import ControlClient as _BlockingClient
from .paths import DEFAULT_SOCKET
from .control_client import ControlUnavailable, dumps_line

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
COMMANDS = {"status": False, "up": True, "down": True, "rekey": True, "reload": False,
            "memory": False}  # cmd -> needs tunnel ("memory": traced allocations, PYTHONTRACEMALLOC=1 only)

Handler = Callable[[dict], Awaitable[dict]]


class ControlError(Exception):
    """The server could not be started (one line, for the operator)."""


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
                    writer.write(dumps_line({"ok": False, "error": f"request too large (limit {self.max_request} bytes)"}))
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
        writer.write(dumps_line(resp))
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


class ControlClient(_BlockingClient):
    """Blocking client for cgwctl (one request per call), with an asyncio form for tests."""

    async def arequest(self, req: dict, timeout: float = 10.0) -> dict:
        """The same from asyncio code (runs the blocking call in a thread)."""
        return await asyncio.to_thread(self.request, req, timeout)
