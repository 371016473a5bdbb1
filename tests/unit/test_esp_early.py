"""Packets on an SPI IKE said is coming, before its pair is installed (expect_spi).

IKEv1 quick mode: the initiator installs the pair when it receives message 2 and strongSwan
sends on it at once, so its first packets can reach the responder before message 3 does. The
userspace data path holds them (bounded in packets, SPIs and time) and delivers them when the
pair is installed; everything else on an unknown SPI is still an unknown_spi drop at once."""

import os

from test_esp_datapath import Harness, pair_mirror, ping

from cgwd.esp.userspace import EARLY_HOLD, EARLY_PACKETS, EARLY_SPIS

PEER = ("198.51.100.1", 4500)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _rekey(h, spi_a=0x1003, spi_b=0x2004, **kw):
    """b (the initiator here) has the new pair and sends two pings on it; a has not yet."""
    a1, b1 = pair_mirror(0x1001, 0x2002, **kw)
    a2, b2 = pair_mirror(spi_a, spi_b, **kw)
    h.a.install(a1)
    h.b.install(b1)
    h.b.install(b2)
    h.b.send_inner(ping(1, src="169.254.10.1", dst="169.254.10.2"))
    h.b.send_inner(ping(2, src="169.254.10.1", dst="169.254.10.2"))
    return a2


def _drain(h):
    out = []
    while (p := h.tun_a()):
        out.append(p)
    return out


def test_packets_before_the_pair_are_delivered_at_install():
    clock = Clock()
    h = Harness(clock=clock)
    a2 = _rekey(h)
    h.a.expect_spi(0x1003, 30.0)
    h.deliver_ba()
    assert _drain(h) == [] and "unknown_spi" not in h.a.stats()["drops"]
    clock.now += 0.05
    h.a.install(a2)
    got = b"".join(_drain(h))
    assert ping(1, src="169.254.10.1", dst="169.254.10.2") in got
    assert ping(2, src="169.254.10.1", dst="169.254.10.2") in got
    st = h.a.stats()
    assert st["early"] == {"pending_spis": 0, "delivered": 2}
    assert {s["spi_in"]: s["packets_in"] for s in st["sas"]}[0x1003] == 2
    assert "unknown_spi" not in st["drops"]
    h.close()


def test_without_expect_an_unknown_spi_is_dropped_at_once():
    h = Harness()
    a2 = _rekey(h)
    h.deliver_ba()
    assert h.a.stats()["drops"]["unknown_spi"] == 2
    h.a.install(a2)
    assert _drain(h) == [] and h.a.stats()["early"]["delivered"] == 0
    h.close()


def test_held_packets_expire_and_count_as_unknown_spi():
    clock = Clock()
    h = Harness(clock=clock)
    a2 = _rekey(h)
    h.a.expect_spi(0x1003, 30.0)
    h.deliver_ba()
    clock.now += EARLY_HOLD + 0.1
    h.a.check_lifetimes()
    assert h.a.stats()["drops"]["unknown_spi"] == 2
    h.a.install(a2)
    assert _drain(h) == [] and h.a.stats()["early"]["delivered"] == 0
    h.close()


def test_an_expectation_ends_after_its_seconds():
    clock = Clock()
    h = Harness(clock=clock)
    _rekey(h)
    h.a.expect_spi(0x1003, 5.0)
    clock.now += 5.1
    h.deliver_ba()
    st = h.a.stats()
    assert st["drops"]["unknown_spi"] == 2 and st["early"]["pending_spis"] == 0
    h.close()


def test_bounded_per_spi_and_in_spis():
    clock = Clock()
    h = Harness(clock=clock)
    h.a.expect_spi(0x5000, 30.0)
    junk = (0x5000).to_bytes(4, "big") + (1).to_bytes(4, "big") + os.urandom(64)
    for _ in range(EARLY_PACKETS + 5):
        h.a.receive_esp(junk, PEER)
    assert h.a.stats()["drops"]["unknown_spi"] == 5
    for k in range(EARLY_SPIS + 3):
        h.a.expect_spi(0x6000 + k, 30.0)
    st = h.a.stats()
    assert st["early"]["pending_spis"] == EARLY_SPIS
    # the oldest expectation (0x5000) was forgotten with what it held
    assert st["drops"]["unknown_spi"] == 5 + EARLY_PACKETS
    h.close()


def test_forged_packets_held_then_fail_authentication_at_install():
    """Holding is not trusting: a held packet is decrypted and checked like any other."""
    clock = Clock()
    h = Harness(clock=clock)
    a2 = _rekey(h)
    h.a.expect_spi(0x1003, 30.0)
    forged = (0x1003).to_bytes(4, "big") + (7).to_bytes(4, "big") + os.urandom(64)
    h.a.receive_esp(forged, PEER)
    h.a.install(a2)
    st = {s["spi_in"]: s for s in h.a.stats()["sas"]}[0x1003]
    assert st["packets_in"] == 0 and _drain(h) == []
    assert h.a.stats()["early"]["delivered"] == 1
    h.close()


def test_raw_esp_registers_the_expected_spi_and_releases_it():
    clock = Clock()
    h = Harness(clock=clock)
    a1, b1 = pair_mirror(0x1001, 0x2002, udp_encap=False)
    h.a.install(a1)
    sock = h.a._esp_sock
    assert 0x1001 in sock.spis()
    h.a.expect_spi(0x1003, 5.0)
    assert 0x1003 in sock.spis()
    clock.now += 6.0
    h.a.check_lifetimes()
    assert 0x1003 not in sock.spis() and 0x1001 in sock.spis()
    h.a.expect_spi(0x1005, 5.0)
    h.a.remove_all()
    assert sock.spis() == []
    h.close()


def test_expect_for_an_installed_spi_changes_nothing():
    h = Harness()
    a1, _ = pair_mirror(0x1001, 0x2002)
    h.a.install(a1)
    h.a.expect_spi(0x1001, 30.0)
    assert h.a.stats()["early"]["pending_spis"] == 0
    h.close()


def test_ikev1_responder_holds_what_the_initiator_sends_before_message_3():
    """Both IKE engines and both data paths in memory: A (initiator) installs its pair on
    quick-mode message 2 and sends a ping on it; message 3 is late. B's engine said the SPI
    was coming (SpiPending, with message 2), so B's data path holds the ping and delivers it
    once message 3 arrives and the pair is installed: nothing is lost."""
    from test_ike_session import established_with_late_qm3

    from cgwd.ike.events import IpsecSaUp, SpiPending

    net, held = established_with_late_qm3()
    (ua,) = net.ev(net.a, IpsecSaUp)
    assert net.ev(net.b, IpsecSaUp) == []
    (pending,) = net.ev(net.b, SpiPending)
    assert pending.spi_in == ua.pair.spi_out and pending.seconds > 0
    h = Harness()
    h.b.expect_spi(pending.spi_in, pending.seconds)
    h.a.install(ua.pair)
    h.a.send_inner(ping(9))
    for d, _addr in h.raw_sent + h.wire_ab:
        h.b.receive_esp(d, PEER)
    assert "unknown_spi" not in h.b.stats()["drops"]
    for d in held:
        net.b.peer.receive_datagram(d.data, (net.a.public_addr, net.a.public_port(d.local_port)),
                                    net.b.local_port_for(d.remote[1]), net.now)
    net.pump()
    (ub,) = net.ev(net.b, IpsecSaUp)
    h.b.install(ub.pair)
    assert h.tun_b() == ping(9)
    assert h.b.stats()["early"]["delivered"] == 1
    h.close()
