"""In-memory harness for the IKEv2 engine tests: two :class:`Ikev2Peer` on a fake network with a
fake clock, seeded randomness, optional loss, duplication, reordering and a NAT in front of A.

(The tests of the harness itself are at the end.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cgwd.ike.events import IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up
from cgwd.ike.v2.peer import Ikev2Peer, Ikev2PeerConfig

PSK = b"harness-psk-not-secret"
# MODP-2048 by default: cryptography checks a MODP-1024 public value for some 0.2 s of CPU (AWS's
# default group is exercised by the tests that name it)
DEFAULT = {"ike_proposals": ["aes128-sha256-modp2048"], "esp_proposals": ["aes128-sha1-modp2048"]}
A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"
A_PRIVATE = "192.168.1.10"
A_PUBLIC = "203.0.113.2"


def seeded(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


@dataclass
class Side:
    peer: Ikev2Peer
    addr: str  # the address the other side sees
    events: list = field(default_factory=list)

    def ups(self) -> list[IpsecSaUp]:
        return [e for e in self.events if isinstance(e, IpsecSaUp)]

    def downs(self) -> list[IpsecSaDown]:
        return [e for e in self.events if isinstance(e, IpsecSaDown)]

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def installed(self) -> list:
        st = self.peer.status()
        return [s for s in st["ipsec_sas"] if s["state"] == "installed"]


class Net:
    """A and B joined by a lossy wire. ``nat=True`` puts A behind a NAT (private address,
    source port translated); ``drop``/``dup`` are callables deciding per datagram."""

    def __init__(self, a_kw: dict | None = None, b_kw: dict | None = None, *, nat: bool = False, seed: int = 1,
                 b_initiator: bool = False) -> None:
        self.nat = nat
        a_local = A_PRIVATE if nat else A_ADDR
        a_seen = A_PUBLIC if nat else A_ADDR
        akw = {"psk": PSK, **DEFAULT, **({"local_id": A_PUBLIC} if nat else {})}
        akw.update(a_kw or {})
        bkw = {"psk": PSK, **DEFAULT, "initiator": b_initiator}
        bkw.update(b_kw or {})
        self.a = Side(Ikev2Peer(Ikev2PeerConfig(a_local, B_ADDR, **akw), random_bytes=seeded(seed), name="A"), a_seen)
        self.b = Side(Ikev2Peer(Ikev2PeerConfig(B_ADDR, a_seen, **bkw), random_bytes=seeded(seed + 1000), name="B"),
                      B_ADDR)
        self.now = 0.0
        self.drop = lambda src, d: False
        self.dup = lambda src, d: False
        self.wire: list[tuple[str, object]] = []  # everything sent, in order: ("A"|"B", Datagram)
        self.nat_ports = {500: 31000, 4500: 31500}
        self.delivered = 0

    # ------------------------------------------------------------------ moving datagrams

    def _deliver(self, src: Side, dst: Side, d) -> None:
        if d.raw:
            return
        sport = d.local_port
        if src is self.a and self.nat:
            sport = self.nat_ports[d.local_port]
        dport = d.remote[1]
        if dst is self.a and self.nat:
            inv = {v: k for k, v in self.nat_ports.items()}
            if dport not in inv:
                return
            dport = inv[dport]
        self.delivered += 1
        dst.peer.receive_datagram(d.data, (src.addr, sport), dport, self.now)

    def collect(self) -> None:
        for side in (self.a, self.b):
            while (e := side.peer.next_event()) is not None:
                side.events.append(e)

    def pump(self, rounds: int = 100) -> int:
        """Deliver until quiet; returns the number of datagrams moved."""
        moved = 0
        for _ in range(rounds):
            batch = [(self.a, self.b, d) for d in self.a.peer.datagrams_to_send()]
            batch += [(self.b, self.a, d) for d in self.b.peer.datagrams_to_send()]
            self.collect()
            if not batch:
                break
            for src, dst, d in batch:
                self.wire.append(("A" if src is self.a else "B", d))
                if self.drop(src, d):
                    continue
                self._deliver(src, dst, d)
                if self.dup(src, d):
                    self._deliver(src, dst, d)
                moved += 1
            self.collect()
        return moved

    def advance(self, dt: float) -> None:
        """Let time pass in timer-sized steps, firing both engines' timers and pumping."""
        end = self.now + dt
        while True:
            ts = [t for t in (self.a.peer.get_timer(), self.b.peer.get_timer()) if t is not None]
            t = min(ts) if ts else None
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            for side in (self.a, self.b):
                pt = side.peer.get_timer()
                if pt is not None and pt <= self.now:
                    side.peer.handle_timer(self.now)
                    nt = side.peer.get_timer()
                    assert nt is None or nt > self.now, f"{side.peer.name}: next timer {nt} not after {self.now}"
            self.pump()
        self.now = end
        self.pump()

    def up(self) -> "Net":
        self.a.peer.start(self.now)
        self.b.peer.start(self.now)
        self.pump()
        return self

    def both_established(self) -> bool:
        return (self.a.peer.status()["state"] == "established" and self.b.peer.status()["state"] == "established")


def pairs_match(a: Side, b: Side) -> bool:
    """Every INSTALLED pair of A has its mirror at B (keys crossing over) and vice versa."""
    pa = {e.pair.spi_in: e.pair for e in a.ups()}
    pb = {e.pair.spi_in: e.pair for e in b.ups()}
    ia = [s for s in a.installed()]
    ib = [s for s in b.installed()]
    if len(ia) != len(ib):
        return False
    for s in ia:
        x = pa[int(s["spi_in"], 16)]
        y = pb.get(x.spi_out)
        if y is None or y.spi_out != x.spi_in or y.enc_key_in != x.enc_key_out or y.enc_key_out != x.enc_key_in:
            return False
        if y.integ_key_in != x.integ_key_out or y.integ_key_out != x.integ_key_in:
            return False
    return True


EVENT_TYPES = (IpsecSaUp, IpsecSaDown, NatDetected, PeerDead, Phase1Up, Phase1Down)


# --------------------------------------------------------------------------- the harness's own tests


def test_harness_brings_a_tunnel_up_and_keys_cross_over():
    net = Net().up()
    assert net.both_established()
    assert len(net.a.installed()) == len(net.b.installed()) == 1
    assert pairs_match(net.a, net.b)


def test_harness_nat_translates_a_source_port():
    net = Net(nat=True).up()
    assert net.both_established()
    # B saw A's translated source port, so B answers there
    assert net.b.peer.remote_port == net.nat_ports[4500]
