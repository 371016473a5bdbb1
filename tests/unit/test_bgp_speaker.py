"""asyncio adapter over loopback: both sides active (collision), big feed, stop."""
import asyncio


from cgwd.bgp.message import Route
from cgwd.bgp.session import (BgpPeerConfig, BgpSession, EndOfRib, RoutesReceived, SessionDown,
                              SessionUp)
from cgwd.bgp.speaker import BgpSpeaker


from loopback_helpers import free_port, wait


def make(local, remote, lasn, rasn, rid, port, events, hold=9, passive=False):
    sess = BgpSession(BgpPeerConfig(local, remote, lasn, rasn, rid, hold_time=hold,
                                    connect_retry=0.3, passive=passive))
    sp = BgpSpeaker(sess, local_address=local, remote_address=remote, port=port,
                    on_event=events.append)
    return sess, sp


def test_speakers_establish_exchange_and_stop():
    async def main():
        port = free_port()
        ea, eb = [], []
        sa, a = make("127.0.0.2", "127.0.0.3", 65000, 64512, "10.0.0.2", port, ea)
        sb, b = make("127.0.0.3", "127.0.0.2", 64512, 65000, "10.0.0.1", port, eb)
        n = 20000
        sb.announce([Route(f"10.{i // 256 % 256}.{i % 256}.0/24", "192.0.2.1") for i in range(n)])  # loopback next hops are invalid
        sa.announce(["192.168.50.0/24"])
        await a.start()
        await b.start()
        await wait(lambda: sa.state == sb.state == "Established", 10)
        got = {}
        await wait(lambda: any(isinstance(e, EndOfRib) for e in ea), 30)
        for e in ea:
            if isinstance(e, RoutesReceived):
                got.update({r.prefix: r for r in e.announced})
        assert len(got) == n
        assert len([e for e in ea if isinstance(e, SessionUp)]) == 1
        assert not [e for e in ea if isinstance(e, SessionDown)]
        assert sa.status()["prefixes_received"] == n
        # exactly one TCP connection per side survives the collision
        assert len(a._protos) == 1 and len(b._protos) == 1
        await b.stop("bye")
        await wait(lambda: any(isinstance(e, SessionDown) for e in ea), 5)
        down = [e for e in ea if isinstance(e, SessionDown)][0]
        assert down.notification[:2] == (6, 2) and "bye" in down.reason
        await a.stop()
    asyncio.run(main())


def test_passive_speaker_rejects_unknown_source():
    async def main():
        port = free_port()
        ev = []
        s, sp = make("127.0.0.4", "127.0.0.5", 65000, 64512, "10.0.0.2", port, ev, passive=True)
        await sp.start()
        r, w = await asyncio.open_connection("127.0.0.4", port, local_addr=("127.0.0.6", 0))
        data = await asyncio.wait_for(r.read(100), 5)
        assert data == b""                # closed without an OPEN
        w.close()
        assert s.state == "Active"
        await sp.stop()
    asyncio.run(main())


def test_slow_consumer_keeps_session_up_both_ways():
    """A slow on_event handler (0.25 s per batch) while a feed arrives, hold time 3 s.

    Input is processed in slices and the loop yields between them, so our KEEPALIVEs
    go out on time (the sender's hold timer does not expire), and our hold timer does
    not expire while the sender's KEEPALIVEs wait in our backlog.
    """
    import time as _time

    async def main():
        port = free_port()
        ea, eb = [], []

        def slow(ev):
            ea.append(ev)
            if isinstance(ev, RoutesReceived):
                _time.sleep(0.25)          # blocks the loop, like heavy RIB work would

        sa = BgpSession(BgpPeerConfig("127.0.0.7", "127.0.0.8", 65000, 64512, "10.0.0.2",
                                      hold_time=3, connect_retry=0.3))
        a = BgpSpeaker(sa, local_address="127.0.0.7", remote_address="127.0.0.8", port=port,
                       on_event=slow, slice_bytes=8192)
        sb, b = make("127.0.0.8", "127.0.0.7", 64512, 65000, "10.0.0.1", port, eb, hold=3,
                     passive=True)
        n = 40000                          # 160 KB of NLRI -> about 20 slices -> ~5 s of work
        sb.announce([Route(f"10.{i // 256 % 256}.{i % 256 if i < 65536 else 0}.0/24" if i < 65536
                           else f"11.{i // 65536}.{i // 256 % 256}.{i % 256}/32", "192.0.2.1")
                     for i in range(n)])
        await b.start()
        await a.start()
        await wait(lambda: any(isinstance(e, EndOfRib) for e in ea), 60)
        got = sum(len(e.announced) for e in ea if isinstance(e, RoutesReceived))
        assert got == n
        assert not [e for e in ea if isinstance(e, SessionDown)]
        assert not [e for e in eb if isinstance(e, SessionDown)]
        assert sa.state == sb.state == "Established"
        assert sb.status()["messages_in"]["keepalive"] >= 2   # ours arrived during the feed
        await a.stop()
        await b.stop()
    asyncio.run(main())
