"""IkeEndpoint: two endpoints on loopback addresses inside a private network namespace
(``unshare -n``), our initiator against our responder over real UDP sockets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, socket, subprocess, sys
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from cgwd.ike.endpoint import IkeEndpoint, SOL_UDP, UDP_ENCAP
    from cgwd.ike.events import IpsecSaUp
    from cgwd.ike.v1 import IkePeer, IkePeerConfig

    async def main():
        res = {"a": [], "b": [], "esp_b": []}
        ea, eb = IkeEndpoint("127.0.0.1"), IkeEndpoint("127.0.0.2")
        ea.open(); eb.open()
        res["encap_before"] = eb.natt_socket.getsockopt(SOL_UDP, UDP_ENCAP)
        pa = IkePeer(IkePeerConfig("127.0.0.1", "127.0.0.2", b"k", nat_traversal=sys.argv[1]), name="a")
        pb = IkePeer(IkePeerConfig("127.0.0.2", "127.0.0.1", b"k", initiator=False), name="b")
        ea.event_handler = lambda p, e: res["a"].append(type(e).__name__)
        eb.event_handler = lambda p, e: res["b"].append(type(e).__name__)
        eb.esp_handler = lambda data, remote: res["esp_b"].append([data.hex(), remote[0]])
        ea.add_peer(pa); eb.add_peer(pb)
        ea.start_peer(pa)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "IpsecSaUp" in res["a"] and "IpsecSaUp" in res["b"]:
                break
        res["ports"] = [pa.local_port, pa.remote_port]
        ea.send_esp(b"\x00\x00\x10\x01payload", ("127.0.0.2", 4500))
        ea.natt_socket.sendto(b"\xff", ("127.0.0.2", 4500))
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.3", 0))
        stranger.sendto(b"\x01" * 28, ("127.0.0.2", 500))
        await asyncio.sleep(0.3)
        res["eb"] = eb.counters
        eb.enable_kernel_encap()
        res["encap_after"] = eb.natt_socket.getsockopt(SOL_UDP, UDP_ENCAP)
        ea.stop_peer(pa)
        await asyncio.sleep(0.3)
        res["b_state"] = pb.status()["state"]
        ea.close(); eb.close()
        print(json.dumps(res))

    asyncio.run(main())
    """
)


def run(nat: str) -> dict:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and iproute2 for a private network namespace")
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", SCRIPT, nat],
        capture_output=True, text=True, timeout=60, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_endpoint_establishes_over_udp_with_natt_marker():
    res = run("force")
    assert "IpsecSaUp" in res["a"] and "IpsecSaUp" in res["b"]
    assert res["ports"] == [4500, 4500]  # floated: IKE went over 4500 with the non-ESP marker
    assert res["esp_b"] == [[b"\x00\x00\x10\x01payload".hex(), "127.0.0.1"]]
    assert res["eb"]["keepalives_received"] == 1
    assert res["eb"]["drop_unknown_peer"] == 1
    assert res["encap_before"] == 0 and res["encap_after"] == 2
    assert res["b_state"] == "idle"  # our DELETE reached the responder
    assert "Phase1Down" in res["b"]


def test_endpoint_without_nat_stays_on_500():
    res = run("off")
    assert "IpsecSaUp" in res["a"] and "IpsecSaUp" in res["b"]
    assert res["ports"] == [500, 500]


def _free_port() -> int:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_endpoint_that_cannot_bind_4500_leaves_no_socket_behind():
    # issue 12: binding the NAT-T port failed after the IKE port was bound: that socket leaked
    import asyncio
    import os
    import socket

    from cgwd.ike.endpoint import IkeEndpoint

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEADDR: ours cannot share it
    busy.bind(("127.0.0.1", 0))
    natt_port = busy.getsockname()[1]
    port = _free_port()
    fds = len(os.listdir("/proc/self/fd"))

    async def attempt():
        ep = IkeEndpoint("127.0.0.1", port=port, natt_port=natt_port)
        with pytest.raises(OSError):
            ep.open()
        assert ep.natt_socket is None
        return ep

    ep = asyncio.run(attempt())  # the endpoint lives on (the daemon keeps it to retry)
    try:
        assert len(os.listdir("/proc/self/fd")) == fds
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", port))  # EADDRINUSE if the port-500 socket had leaked
        probe.close()
    finally:
        busy.close()
        ep.close()


def test_disabled_tunnel_answers_no_initiation_and_its_retransmission_is_answered_once_enabled():
    """Chaos fault 102: AWS's charon re-establishes an IKE SA (main mode) when cgwd disables a
    tunnel while charon's own quick mode is in flight. While disabled, that MM1 must not be
    answered (the tunnel is down at both ends) and must not be cached as answered-with-nothing:
    the same datagram retransmitted after `enabled = true` gets its MM2."""
    import asyncio

    async def main() -> None:
        from cgwd.ike.endpoint import IkeEndpoint
        from cgwd.ike.v1 import IkePeer, IkePeerConfig

        aws = IkePeer(IkePeerConfig("192.0.2.1", "192.0.2.2", b"k", nat_traversal="off"), name="aws")
        aws.start(0.0)
        (mm1,) = aws.datagrams_to_send()
        ep = IkeEndpoint("192.0.2.2")
        ours = IkePeer(IkePeerConfig("192.0.2.2", "192.0.2.1", b"k", nat_traversal="off"), name="ours")
        ep.add_peer(ours)
        ep.set_enabled(ours, False)
        ep._dispatch(mm1.data, ("192.0.2.1", 500), False)
        assert ep.counters.get("drop_tunnel_disabled") == 1
        assert not ours.sas and ep.counters.get("send_no_socket", 0) == 0
        ep.set_enabled(ours, True)
        ep._dispatch(mm1.data, ("192.0.2.1", 500), False)
        assert len(ours.sas) == 1 and ours.sas[0].icookie == mm1.data[:8]
        assert ep.counters.get("send_no_socket") == 1  # its MM2 (the endpoint has no socket here)
        assert ours.counters.get("drop_duplicate", 0) == 0

    asyncio.run(main())
