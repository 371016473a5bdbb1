"""The data path refuses a pair: IKE is told (issue 12 item 8, the IKE side), and offers only
what the data path can install."""

from __future__ import annotations

import pytest

from cgwd.ike.v1 import constants as C
from cgwd.ike.engine import ChildState, IkeEngine
from cgwd.ike.events import IpsecSaDown, IpsecSaUp
from cgwd.ike.v1 import IkePeer, IkePeerConfig
from cgwd.ike.v1.peer import DELETE_DELAY, QM_RETRY_DELAY
from test_ike_session import A_ADDR, B_ADDR, PSK, established, make_pair
from test_ike_timers import run_checked


def _ups(net, side):
    return [(t, e.pair) for t, e in side.events if isinstance(e, IpsecSaUp)]


def test_refused_pair_is_deleted_at_the_peer_and_retried_with_backoff():
    net = make_pair()
    ua, ub = established(net)
    a = net.a.peer
    times = []
    spi = ua.pair.spi_in
    for _ in range(4):
        a.install_failed(spi, "kernel lacks aes128 (test)", net.now)
        net.pump()
        # the peer deletes its side of the pair (it would send into a black hole)
        assert net.ev(net.b, IpsecSaDown)[-1].reason == "deleted by peer"
        assert a.child_state(spi) is None and a.status()["ipsec_sas"] == []
        assert "kernel lacks aes128 (test)" in a.status()["last_error"]
        t0 = net.now
        n = len(_ups(net, net.a))
        run_checked(net, t0 + 200)
        t_up, pair = _ups(net, net.a)[n]
        times.append(round(t_up - t0))
        spi = pair.spi_in
        net.now = t_up  # the next failure right after the next pair came up
    assert times == [QM_RETRY_DELAY, 2 * QM_RETRY_DELAY, 4 * QM_RETRY_DELAY, 8 * QM_RETRY_DELAY]
    assert a.counters["install_failures"] == 4


def test_refused_rekey_keeps_the_pair_it_was_to_replace():
    net = make_pair(a_kw={"ipsec_lifetime": 300, "rekey_margin": 60, "rekey_fuzz": 0})
    ua, ub = established(net)
    old = ua.pair.spi_in
    net.advance(50)
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    new = _ups(net, net.a)[-1][1]
    assert new.replaces_spi_in == old and net.a.peer.child_state(old) == ChildState.REKEYED
    net.a.peer.install_failed(new.spi_in, "EEXIST (test)", net.now)
    net.pump()
    assert net.a.peer.child_state(old) == ChildState.INSTALLED
    net.advance(net.now + DELETE_DELAY + 1)
    # the old pair was not deleted after the rekey delay: it still carries traffic at both ends
    assert old not in [d.spi_in for d in net.ev(net.a, IpsecSaDown)]
    assert ub.pair.spi_in in [int(s["spi_in"], 16) for s in net.b.peer.status()["ipsec_sas"]]
    # its rekey is tried again (after the backoff) and, accepted this time, replaces it
    run_checked(net, net.now + QM_RETRY_DELAY + 5)
    last = _ups(net, net.a)[-1][1]
    assert last.spi_in != new.spi_in and last.replaces_spi_in == old
    net.advance(net.now + DELETE_DELAY + 1)
    assert (old, "rekeyed") in [(d.spi_in, d.reason) for d in net.ev(net.a, IpsecSaDown)]


def test_only_installable_algorithms_are_offered_and_accepted():
    cbc_only = frozenset({"aes128", "aes256", "sha1", "sha256"})
    gcm, cbc = "aes128gcm16-modp2048", "aes128-sha1-modp2048"
    # we initiate: GCM is not offered, CBC is negotiated
    net = make_pair(esp=[gcm, cbc], a_kw={"esp_allowed": cbc_only})
    ua, ub = established(net)
    assert ua.pair.encryption == "aes128" and ub.pair.encryption == "aes128"
    assert net.a.peer.config.esp_unusable == ["aes128gcm16-modp2048"]
    # the peer initiates with GCM only: refused
    net = make_pair(esp=[gcm], b_kw={"esp": [gcm, cbc], "esp_allowed": cbc_only, "initiator": False})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.b, IpsecSaUp) and net.b.peer.counters["drop_no_proposal_chosen"] == 1
    with pytest.raises(ValueError, match="can be installed by the data path"):
        IkePeerConfig(A_ADDR, B_ADDR, PSK, esp_proposals=[gcm], esp_allowed=cbc_only)
    with pytest.raises(ValueError, match="unknown algorithm"):
        IkePeerConfig(A_ADDR, B_ADDR, PSK, esp_allowed=frozenset({"des"}))


def test_the_ikev1_peer_is_an_ike_engine():
    peer = IkePeer(IkePeerConfig(A_ADDR, B_ADDR, PSK))
    assert isinstance(peer, IkeEngine) and peer.version == 1
    net = make_pair()
    ua, _ = established(net)
    assert net.a.peer.child_state(ua.pair.spi_in) is ChildState.INSTALLED
    assert net.a.peer.child_state(0x1234) is None
    net.a.peer.install_failed(0x1234, "no such pair", net.now)
    assert net.a.peer.counters["install_failed_unknown_spi"] == 1
    assert net.a.peer.status()["ipsec_sas"][0]["state"] == "installed"
    assert C.EXCH_QUICK  # (constants stay importable)
