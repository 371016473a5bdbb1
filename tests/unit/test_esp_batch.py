"""The userspace data path's batched outbound path: TUN reads in batches, ESP packets of
equal size sent with one UDP GSO sendmsg (the kernel splits them), fallback one by one.

A SOCK_DGRAM socketpair stands in for the TUN (it keeps packet boundaries like a TUN);
the UDP side is a real loopback socket, so the kernel's GSO splitting is exercised for real.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

import pytest

from cgwd.esp.userspace import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, UDP_SEGMENT, UserspaceDatapath
from cgwd.ipsec_sa import IpsecSaPair

pytest.importorskip("scapy")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402

INSIDE = ipaddress.IPv4Interface("169.254.10.2/30")


class FakeEndpoint:
    """Looks like IkeEndpoint to the data path: send_esp + natt_socket."""

    def __init__(self, sock, fail_gso: int | None = None):
        self.sock = sock
        self.fail_gso = fail_gso
        self.sendmsg_calls: list[tuple[int, int]] = []  # (buffer length, segment size)
        self.single: list[bytes] = []

    @property
    def natt_socket(self):
        return self

    def sendmsg(self, buffers, anc, flags, addr):
        (level, kind, data), = anc
        assert (level, kind) == (socket.SOL_UDP, UDP_SEGMENT)
        seg = int.from_bytes(data, "little" if socket.htons(1) != 1 else "big")
        self.sendmsg_calls.append((sum(len(b) for b in buffers), seg))
        if self.fail_gso:
            raise OSError(self.fail_gso, os.strerror(self.fail_gso))
        return self.sock.sendmsg(buffers, anc, flags, addr)

    def send_esp(self, data, remote):
        self.single.append(bytes(data))
        self.sock.sendto(data, remote)


def pair(enc="aes128", integ="sha1", port=4500):
    if integ:
        k1, k2, i1, i2 = os.urandom(16), os.urandom(16), os.urandom(20), os.urandom(20)
    else:
        k1, k2, i1, i2 = os.urandom(20), os.urandom(20), b"", b""
    a = IpsecSaPair(0x1111, 0x2222, enc, integ, k1, k2, i1, i2, local_address="127.0.0.1",
                    remote_address="127.0.0.1", udp_encap=True, remote_port=port)
    b = IpsecSaPair(0x2222, 0x1111, enc, integ, k2, k1, i2, i1, local_address="127.0.0.1",
                    remote_address="127.0.0.1", udp_encap=True, remote_port=port)
    return a, b


def tcp_packet(i: int, size: int, df: bool = True) -> bytes:
    p = IP(src="10.200.0.10", dst="10.100.0.10", id=i, flags="DF" if df else 0) / TCP(
        sport=40000, dport=5201, seq=1000 + i, flags="A") / (bytes([i % 251]) * size)
    return bytes(p)


@pytest.fixture
def wires():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.settimeout(2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tun_app, tun_dp = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_dp.setblocking(False)
    tun_app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    yield rx, tx, tun_app, tun_dp
    for s in (rx, tx, tun_app, tun_dp):
        s.close()


def make(ep, pa, tun_fd, **kw):
    dp = UserspaceDatapath(name="a", ifname="cgw-a", inside=INSIDE, send_udp=ep.send_esp, udp_socket=lambda: ep.natt_socket,
                           on_event=lambda ev: None, local_address="127.0.0.1", **kw)
    dp.install(pa)
    dp._tun_fd = tun_fd
    return dp


def receive_all(rx, n):
    out = []
    for _ in range(n):
        out.append(rx.recv(65535))
    rx.settimeout(0.2)
    with pytest.raises(socket.timeout):
        rx.recv(65535)  # nothing beyond the expected count
    return out


@pytest.mark.parametrize("enc,integ", [("aes128", "sha1"), ("aes128gcm16", None)])
def test_batch_goes_out_in_gso_sends_and_decrypts_in_order(wires, enc, integ):
    rx, tx, tun_app, tun_dp = wires
    pa, pb = pair(enc, integ, port=rx.getsockname()[1])
    ep = FakeEndpoint(tx)
    dp = make(ep, pa, tun_dp.fileno())
    # 40 full-size segments, a short one, 10 full-size, a 3000-byte packet (fragmented
    # to the tunnel MTU of the pair: 1422 for CBC/SHA-1, 1438 for GCM over NAT-T), then 5 small ones: several GSO runs, a short tail riding along,
    # and single sends.
    sizes = [1379] * 40 + [100] + [1379] * 10 + [3000] + [20] * 5
    inner = [tcp_packet(i, s) for i, s in enumerate(sizes)]
    for p in inner:
        tun_app.send(p)
    dp._on_tun_readable()  # BATCH=64 >= 57 packets: one batch
    wire = receive_all(rx, len(inner) + 2)  # the 3000-byte packet became 3 fragments
    assert ep.sendmsg_calls, "equal-size ESP packets should go out in GSO batches"
    for length, seg in ep.sendmsg_calls:
        assert length <= GSO_MAX_BYTES and length <= seg * GSO_MAX_SEGMENTS
    assert sum(-(-length // seg) for length, seg in ep.sendmsg_calls) + len(ep.single) == len(wire)
    # The peer decrypts every packet, in order, with nothing dropped by its replay window.
    db_tun_app, db_tun_dp = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        b = UserspaceDatapath(name="b", ifname="cgw-b", inside=INSIDE, send_udp=lambda d, a: None,
                              on_event=lambda ev: None, local_address="127.0.0.1")
        b.install(pb)
        b._tun_fd = db_tun_dp.fileno()
        for esp in wire:
            b.receive_esp(esp, ("127.0.0.1", 4500))
        db_tun_app.settimeout(1)
        got = [db_tun_app.recv(65535) for _ in range(len(wire))]
    finally:
        db_tun_app.close()
        db_tun_dp.close()
    st = b.sa_pair(0x2222).stats()
    assert st["packets_in"] == len(wire) and st["auth_failures"] == 0 and not st["drops"]
    seqs = [int.from_bytes(w[4:8], "big") for w in wire]
    assert seqs == list(range(1, len(wire) + 1))
    # Inner packets: as sent, except DF cleared (and the 3000-byte one in 3 fragments).
    frag_at = sizes.index(3000)
    for i, p in enumerate(inner):
        if i == frag_at:
            continue
        j = i if i < frag_at else i + 2
        want = IP(p)
        want.flags = 0
        del want.chksum
        assert got[j] == bytes(want)
    frags = [IP(g) for g in got[frag_at:frag_at + 3]]
    assert dp.mtu == {"aes128": 1422, "aes128gcm16": 1438}[enc]
    room = (dp.mtu - 20) & ~7
    assert [f.frag * 8 for f in frags] == [0, room, 2 * room] and all(len(g) <= dp.mtu for g in got)
    assert b"".join(bytes(f.payload) for f in frags) == bytes(IP(inner[frag_at]).payload)


def test_gso_refused_falls_back_to_one_by_one(wires):
    rx, tx, tun_app, tun_dp = wires
    pa, _ = pair(port=rx.getsockname()[1])
    ep = FakeEndpoint(tx, fail_gso=errno.EIO)
    dp = make(ep, pa, tun_dp.fileno())
    for i in range(10):
        tun_app.send(tcp_packet(i, 1000))
    dp._on_tun_readable()
    assert len(ep.sendmsg_calls) == 1 and dp._gso is False
    assert len(ep.single) == 10
    assert receive_all(rx, 10) == ep.single
    for i in range(10):
        tun_app.send(tcp_packet(i, 1000))
    dp._on_tun_readable()
    assert len(ep.sendmsg_calls) == 1, "GSO is not tried again after the kernel refused it"
    assert len(ep.single) == 20


def test_gso_send_error_is_a_counted_drop(wires):
    rx, tx, tun_app, tun_dp = wires
    pa, _ = pair(port=rx.getsockname()[1])
    ep = FakeEndpoint(tx, fail_gso=errno.ENOBUFS)
    dp = make(ep, pa, tun_dp.fileno())
    for i in range(5):
        tun_app.send(tcp_packet(i, 1000))
    dp._on_tun_readable()
    st = dp.sa_pair(0x1111).stats()
    assert st["drops"] == {"send_failed": 5} and st["packets_out"] == 5
    assert dp._gso is True  # a transient error does not switch GSO off


def test_plain_callable_send_udp_sends_one_by_one():
    sent = []
    pa, _ = pair()
    dp = UserspaceDatapath(name="a", ifname="cgw-a", inside=INSIDE, send_udp=lambda d, a: sent.append(d),
                           on_event=lambda ev: None, local_address="127.0.0.1")
    dp.install(pa)
    tun_app, tun_dp = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        tun_dp.setblocking(False)
        dp._tun_fd = tun_dp.fileno()
        for i in range(7):
            tun_app.send(tcp_packet(i, 500))
        tun_app.send(bytes(IP(src="10.200.0.10", dst="10.100.0.10") / UDP() / b"x")[:10])  # truncated
        dp._on_tun_readable()
    finally:
        tun_app.close()
        tun_dp.close()
    assert len(sent) == 7
    assert dp.stats()["drops"] == {"inner_not_ipv4": 1}


def _tun_pair():
    tun_app, tun_dp = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_dp.setblocking(False)
    return tun_app, tun_dp


def test_fast_and_slow_path_agree_syn_clamped_options_kept():
    """What the inlined fast path lets through and what it hands to the per-function path
    come out as the same inner packets the slow path makes on its own."""
    from cgwd.esp.packet import EspDecoder
    from cgwd.esp.sa import SaPair

    pa, pb = pair()
    batch_sent, single_sent = [], []
    dp_batch = UserspaceDatapath(name="a", ifname="cgw-a", inside=INSIDE, on_event=lambda ev: None,
                                 send_udp=lambda d, a: batch_sent.append(d), local_address="127.0.0.1")
    dp_single = UserspaceDatapath(name="b", ifname="cgw-b", inside=INSIDE, on_event=lambda ev: None,
                                  send_udp=lambda d, a: single_sent.append(d), local_address="127.0.0.1")
    dp_batch.install(pa)
    dp_single.install(pa)
    pkts = [
        bytes(IP(src="10.200.0.10", dst="10.100.0.10", flags="DF") / TCP(flags="S", options=[("MSS", 1460)])),
        bytes(IP(src="10.200.0.10", dst="10.100.0.10", flags="DF") / TCP(flags="SA", options=[("MSS", 1200)])),
        bytes(IP(src="10.200.0.10", dst="10.100.0.10", flags="DF", options=[b"\x94\x04\x00\x00"]) / TCP() / b"o"),
        bytes(IP(src="10.200.0.10", dst="10.100.0.10", flags="DF") / UDP() / (b"u" * 1500)),
        bytes(IP(src="10.200.0.10", dst="10.100.0.10", flags="DF", ttl=1) / TCP(flags="PA") / b"data"),
        bytes(IP(src="10.200.0.10", dst="10.100.0.10") / TCP(flags="A") / b"nodf"),
    ]
    # many headers through the fast path's incremental DF/checksum update (RFC 1624 corners)
    rnd = __import__("random").Random(7)
    pkts += [bytes(IP(src=f"10.200.0.{rnd.randrange(256)}", dst=f"10.100.{rnd.randrange(256)}.10",
                      id=rnd.randrange(65536), ttl=rnd.randrange(1, 256), tos=rnd.randrange(256),
                      flags="DF") / TCP(flags="A") / b"x") for _ in range(40)]
    tun_app, tun_dp = _tun_pair()
    try:
        dp_batch._tun_fd = tun_dp.fileno()
        for p in pkts:
            tun_app.send(p)
        dp_batch._on_tun_readable()
    finally:
        tun_app.close()
        tun_dp.close()
    for p in pkts:
        dp_single.send_inner(p)
    dec1, dec2 = EspDecoder(SaPair(pb).inbound), EspDecoder(SaPair(pb).inbound)
    inner1 = [dec1.decrypt(e)[1] for e in batch_sent]
    inner2 = [dec2.decrypt(e)[1] for e in single_sent]
    assert len(pkts) <= 64 and len(inner1) == len(pkts) + 1  # the 1528-byte UDP packet became two fragments
    assert inner1 == inner2
    assert TCP(IP(inner1[0]).payload.original).options == [("MSS", dp_batch.mss)] and dp_batch.mss == 1382
    assert TCP(IP(inner1[1]).payload.original).options == [("MSS", 1200)]
    for raw in inner1:
        ip = IP(raw)
        assert not ip.flags.DF
        want = ip.chksum
        del ip.chksum
        assert IP(bytes(ip)).chksum == want, "header checksum after clearing DF"


def test_sequence_exhaustion_on_the_fast_path():
    from cgwd.esp.events import SequenceExhausted
    from cgwd.esp.sa import SEQ_HARD_LIMIT

    pa, _ = pair()
    sent, events = [], []
    dp = UserspaceDatapath(name="a", ifname="cgw-a", inside=INSIDE, on_event=events.append,
                           send_udp=lambda d, a: sent.append(d), local_address="127.0.0.1")
    dp.install(pa)
    dp.sa_pair(0x1111).outbound.seq = SEQ_HARD_LIMIT - 2
    tun_app, tun_dp = _tun_pair()
    try:
        dp._tun_fd = tun_dp.fileno()
        for i in range(5):
            tun_app.send(tcp_packet(i, 100))
        dp._on_tun_readable()
    finally:
        tun_app.close()
        tun_dp.close()
    assert [int.from_bytes(e[4:8], "big") for e in sent] == [SEQ_HARD_LIMIT - 1, SEQ_HARD_LIMIT]
    assert dp.sa_pair(0x1111).stats()["drops"] == {"seq_exhausted": 3}
    assert [type(e) for e in events].count(SequenceExhausted) == 1


class RecordingSocket:
    def __init__(self):
        self.calls = []

    def sendmsg(self, buffers, anc, flags, addr):
        (level, kind, data), = anc
        self.calls.append((b"".join(buffers), int.from_bytes(data, "little" if socket.htons(1) != 1 else "big")))
        return sum(len(b) for b in buffers)


class RecordingEndpoint:
    def __init__(self):
        self.natt_socket = RecordingSocket()
        self.single = []

    def send_esp(self, data, remote):
        self.single.append(data)


@pytest.mark.parametrize("sizes", [
    pytest.param([1460] * 64, id="over-65000-bytes-two-gso-sends"),
    pytest.param([1460] * 10 + [1000] + [1460] * 3, id="short-one-ends-the-run"),
    pytest.param([200] * 64, id="64-segments-the-most-one-send-carries"),
    pytest.param([100, 200, 300, 200, 200], id="growing-sizes-cannot-share"),
])
def test_gso_runs_respect_kernel_limits_and_order(sizes):
    pa, _ = pair()
    ep = RecordingEndpoint()
    dp = UserspaceDatapath(name="a", ifname="cgw-a", inside=INSIDE, send_udp=ep.send_esp, udp_socket=lambda: ep.natt_socket,
                           on_event=lambda ev: None, local_address="127.0.0.1")
    dp.install(pa)
    pkts = [bytes([i]) * s for i, s in enumerate(sizes)]
    dp._transmit(list(pkts))
    # Rebuild the datagram sequence as the kernel would split it.
    wire = []
    for buf, seg in ep.natt_socket.calls:
        assert len(buf) <= GSO_MAX_BYTES and -(-len(buf) // seg) <= GSO_MAX_SEGMENTS
        chunks = [buf[i:i + seg] for i in range(0, len(buf), seg)]
        assert all(len(c) == seg for c in chunks[:-1]) and 0 < len(chunks[-1]) <= seg
        wire.extend(chunks)
    # single sends interleave in order too: rebuild by walking the packets
    rebuilt, calls, singles = [], list(ep.natt_socket.calls), list(ep.single)
    while len(rebuilt) < len(pkts):
        nxt = pkts[len(rebuilt)]
        if singles and singles[0] == nxt and not (calls and calls[0][0].startswith(nxt)):
            rebuilt.append(singles.pop(0))
            continue
        buf, seg = calls.pop(0)
        rebuilt.extend(buf[i:i + seg] for i in range(0, len(buf), seg))
    assert rebuilt == pkts
    assert not calls and not singles
