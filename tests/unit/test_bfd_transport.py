"""BFD over UDP (cgwd.bfd.transport, RFC 5881) on loopback: two runners come Up, a packet with
a TTL other than 255 is dropped and counted, the source port is in 49152-65535, a silenced
peer is detected within the detection time, and stop() tells the peer AdminDown."""

from __future__ import annotations

import asyncio
import socket

from cgwd.bfd.codec import BfdState, ControlPacket, decode
from cgwd.bfd.session import BfdDown, BfdParams, BfdUp
from cgwd.bfd.transport import CONTROL_PORT, BfdRunner, Receivers, open_sender

P = BfdParams.from_ms(50, 3)
A_ADDR, B_ADDR = "127.0.0.1", "127.0.0.2"


async def _until(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


def test_two_runners_come_up_detect_silence_and_admin_down():
    async def main():
        loop = asyncio.get_running_loop()
        ev_a, ev_b = [], []
        rx = Receivers()
        a = BfdRunner(A_ADDR, B_ADDR, P, lambda e: ev_a.append((loop.time(), e)), receivers=rx)
        b = BfdRunner(B_ADDR, A_ADDR, P, lambda e: ev_b.append((loop.time(), e)), receivers=rx)
        a.start()
        b.start()
        try:
            await _until(lambda: a.session.state is BfdState.UP and b.session.state is BfdState.UP)
            assert a.status()["remote_discriminator"] == b.local_disc
            lo, hi = 49152, 65535
            assert lo <= a._tx.getsockname()[1] <= hi
            assert a._tx.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 255
            await asyncio.sleep(0.3)
            assert a.session.tx_interval == 50_000 and a.session.detection_time == 150_000
            # a packet with TTL 64 (not one hop) is dropped and counted on b's session
            bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bad.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
            bad.bind((A_ADDR, 0))
            pkt = ControlPacket(state=BfdState.DOWN, my_disc=a.local_disc, your_disc=b.local_disc).encode()
            bad.sendto(pkt, (B_ADDR, CONTROL_PORT))
            bad.close()
            await _until(lambda: b.session.drops.get("ttl") == 1)
            assert b.session.state is BfdState.UP
            # b goes silent (its timer and sends stop, its socket stays): a detects it
            b._timer.cancel()
            b._tx.close()
            b._tx = None
            t0 = loop.time()
            await _until(lambda: a.session.state is not BfdState.UP, 2.0)
            took = loop.time() - t0
            assert took <= 0.15 + 0.06, took
            downs = [e for _, e in ev_a if isinstance(e, BfdDown)]
            assert downs and downs[-1].path_failure
        finally:
            a.stop()
            b.stop()
        assert rx.open == {}
        assert any(isinstance(e, BfdUp) for _, e in ev_a)

    asyncio.run(main())


def test_stop_sends_admin_down():
    async def main():
        rx = Receivers()
        listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listen.bind((B_ADDR, CONTROL_PORT))
        listen.setblocking(False)
        loop = asyncio.get_running_loop()

        async def recv():
            return decode(await asyncio.wait_for(loop.sock_recv(listen, 100), 2))

        a = BfdRunner(A_ADDR, B_ADDR, P, lambda e: None, receivers=rx)
        a.start()
        first = await recv()
        assert first.state is BfdState.DOWN and first.desired_min_tx == 1_000_000
        a.stop()
        got = []
        while True:
            p = decode(listen.recv(100))  # sent synchronously by stop()
            got.append(p.state)
            if p.state is BfdState.ADMIN_DOWN:
                break
        listen.close()
        assert got[-1] is BfdState.ADMIN_DOWN

    asyncio.run(main())


def test_sender_ports_and_ipv6_hop_limit():
    sk = open_sender("::1", lambda: 0.0)
    try:
        assert sk.getsockname()[1] == 49152
        assert sk.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) == 255
    finally:
        sk.close()
