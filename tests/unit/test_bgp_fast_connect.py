"""BgpSpeaker re-sends a lost first SYN after 0.25 s / 0.5 s (new socket), not after the
kernel's 1 s retransmission: over a freshly installed IKEv1 SA the first SYN is often lost
because the responder installs its SA only after the last quick-mode message.

A lost SYN is simulated by a sock_connect that never completes; the peer is a real passive
speaker on loopback.
"""
import asyncio
import socket

from cgwd.bgp.session import BgpPeerConfig, BgpSession
from cgwd.bgp.speaker import FAST_CONNECT_ATTEMPTS, BgpSpeaker


from loopback_helpers import free_port, wait


def pair(port, connect_retry):
    a = BgpSession(BgpPeerConfig("127.0.0.12", "127.0.0.13", 65000, 64512, "10.0.0.2", hold_time=9,
                                 connect_retry=connect_retry))
    b = BgpSession(BgpPeerConfig("127.0.0.13", "127.0.0.12", 64512, 65000, "10.0.0.1", hold_time=9,
                                 connect_retry=connect_retry, passive=True))
    sa = BgpSpeaker(a, local_address="127.0.0.12", remote_address="127.0.0.13", port=port, listen=False)
    sb = BgpSpeaker(b, local_address="127.0.0.13", remote_address="127.0.0.12", port=port)
    return a, b, sa, sb


def lose_first(loop, n_lost):
    """Patch loop.sock_connect: the first n_lost attempts hang (SYN lost), then real connects."""
    real = loop.sock_connect
    calls = []

    async def fake(sock, address):
        calls.append((loop.time(), sock.fileno()))
        if len(calls) <= n_lost:
            await asyncio.Event().wait()      # never answered
        return await real(sock, address)

    loop.sock_connect = fake
    return calls


def test_lost_first_syn_is_retried_quickly_on_a_new_socket():
    async def main():
        loop = asyncio.get_running_loop()
        port = free_port()
        a, b, sa, sb = pair(port, connect_retry=2)
        await sb.start()
        calls = lose_first(loop, 1)
        failures = []
        real_lost = a.connection_lost
        a.connection_lost = lambda *args, **kw: (failures.append(args), real_lost(*args, **kw))
        await sa.start()
        await wait(lambda: a.state == b.state == "Established", 15)
        # the second SYN came from the same connect attempt (no TcpConnectionFails, no
        # ConnectRetry wait), on a new socket
        assert len(calls) == 2
        assert failures == []
        await sa.stop()
        await sb.stop()
    asyncio.run(main())


def test_all_attempts_lost_ends_in_one_connect_failure_within_connect_retry():
    async def main():
        loop = asyncio.get_running_loop()
        port = free_port()
        a, b, sa, sb = pair(port, connect_retry=1.5)
        await sb.start()
        calls = lose_first(loop, 100)
        t0 = loop.time()
        await sa.start()
        await wait(lambda: a.state == "Active", 15)      # ConnectRetry after one failed connect
        spent = loop.time() - t0
        # quick attempts, then the rest of the connect-retry time for the last one
        assert len(calls) == len(FAST_CONNECT_ATTEMPTS) + 1
        assert spent >= 1.5 - 0.05
        await sa.stop()
        await sb.stop()
    asyncio.run(main())


def test_refused_connect_is_not_retried_in_the_same_attempt():
    async def main():
        loop = asyncio.get_running_loop()
        port = free_port()     # nobody listens: RST, an OSError at once
        a = BgpSession(BgpPeerConfig("127.0.0.12", "127.0.0.13", 65000, 64512, "10.0.0.2", hold_time=9,
                                     connect_retry=2))
        sa = BgpSpeaker(a, local_address="127.0.0.12", remote_address="127.0.0.13", port=port, listen=False)
        calls = lose_first(loop, 0)
        await sa.start()
        await wait(lambda: a.state == "Active", 15)
        assert len(calls) == 1
        await sa.stop()
    asyncio.run(main())
