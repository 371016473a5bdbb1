import asyncio
import json
import os
import socket
import stat

import pytest

from cgwd.control import ControlClient, ControlServer, ControlUnavailable


async def handler(req):
    if req["cmd"] == "status":
        return {"ok": True, "status": {"tunnels": []}}
    if req["cmd"] == "rekey" and req["tunnel"] == "boom":
        raise RuntimeError("secret-detail")
    return {"ok": True, "message": f"{req['cmd']} {req.get('tunnel', '')}".strip()}


def raw(path, data: bytes) -> list:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        buf += c
    s.close()
    return [json.loads(x) for x in buf.splitlines()]


def test_round_trip_and_malformed(tmp_path):
    path = str(tmp_path / "run" / "cgwd.sock")

    async def main():
        srv = ControlServer(path, handler)
        await srv.start()
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
            c = ControlClient(path)
            r = await c.arequest({"cmd": "status"})
            assert r == {"ok": True, "status": {"tunnels": []}}
            assert (await c.arequest({"cmd": "up", "tunnel": "tun1"}))["message"] == "up tun1"
            bad = await c.arequest({"cmd": "up"})
            assert bad["ok"] is False and "tunnel" in bad["error"]
            assert "unknown command" in (await c.arequest({"cmd": "explode"}))["error"]
            boom = await c.arequest({"cmd": "rekey", "tunnel": "boom"})
            assert boom["ok"] is False and "secret-detail" not in boom["error"]
            resps = await asyncio.to_thread(raw, path, b'not json\n[1,2]\n{"cmd":"status"}\n\xff\xfe\n')
            assert [r["ok"] for r in resps] == [False, False, True, False]
            assert "malformed" in resps[0]["error"]
            big = await asyncio.to_thread(raw, path, b'{"cmd":"status","x":"' + b"a" * 200000 + b'"}\n')
            assert big[0]["ok"] is False and "too large" in big[0]["error"]
            # still alive
            assert (await c.arequest({"cmd": "reload"}))["ok"]
        finally:
            await srv.close()
        assert not os.path.exists(path)

    asyncio.run(main())


def test_stale_socket_replaced_and_live_refused(tmp_path):
    from cgwd.control import ControlError

    path = str(tmp_path / "cgwd.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # stale socket file

    async def main():
        srv = ControlServer(path, handler)
        await srv.start()
        with pytest.raises(ControlError):
            await ControlServer(path, handler).start()
        await srv.close()

    asyncio.run(main())


def test_not_running(tmp_path):
    path = str(tmp_path / "nope.sock")
    with pytest.raises(ControlUnavailable) as ei:
        ControlClient(path).request({"cmd": "status"})
    assert str(ei.value) == f"cgwd is not running (no socket at {path})"
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    with pytest.raises(ControlUnavailable) as ei:
        ControlClient(path).request({"cmd": "status"})
    assert "not running" in str(ei.value)


def test_memory_command_needs_tracing_and_groups_by_module():
    import tracemalloc

    from cgwd.control import validate_request
    from cgwd.daemon import memory_report

    assert validate_request({"cmd": "memory"}) is None
    was = tracemalloc.is_tracing()
    if was:
        tracemalloc.stop()
    try:
        r = memory_report()
        assert r["ok"] is False and "PYTHONTRACEMALLOC=1" in r["error"]
        tracemalloc.start()
        from cgwd.esp.sa import ReplayWindow

        keep = [ReplayWindow(1024) for _ in range(2000)]
        r = memory_report()
        assert r["ok"] is True and keep
        by = r["memory"]["by_file"]
        assert by.get("cgwd/esp/sa.py", 0) > 2000 * 48, by
        assert r["memory"]["traced_bytes"] >= sum(by.values()) * 0.5
    finally:
        tracemalloc.stop()
        if was:
            tracemalloc.start()
