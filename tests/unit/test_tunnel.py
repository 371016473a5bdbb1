"""The tunnel's parts in memory: inbound ESP as DPD liveness (the data path's counters fed to
the IKE engine), make-before-break when pairs are installed, and refused installs told to IKE.
(Moved here from test_ike_pfs_liveness.py when the tunnel left daemon.py; the assertions are
those of the daemon-level tests they replace.)"""

from __future__ import annotations

import asyncio

from cgwd.config import parse_config
from cgwd.ike.engine import ChildState
from cgwd.ike.events import IpsecSaUp, PeerDead
from cgwd.ike.session import IkePeer
from cgwd.tunnel import datapath_part
from cgwd.tunnel.datapath_part import DatapathPart, InstallRefused
from unit_config import BASE
from test_ike_session import established, make_pair


class _StatsDatapath:
    kind = "userspace"
    pending_outbound = True

    def __init__(self):
        self.sas: list[dict] = []

    def stats(self):
        return {"sas": self.sas}

    def inbound_packets(self):
        return {sa["spi_in"]: int(sa.get("packets_in") or 0) for sa in self.sas if sa.get("spi_in")}


def _part(dp, child_state=lambda spi: None) -> DatapathPart:
    cfg = parse_config(BASE).tunnels[0]
    part = DatapathPart(cfg, "userspace", send_udp=None, on_event=lambda ev: None, child_state=child_state)
    part.datapath = dp
    return part


def _feed(peer: IkePeer, part: DatapathPart, sas: list[dict], now: float) -> bool:
    """What Tunnel.esp_liveness does once a second: the part's look, then the engine."""
    part.datapath.sas = sas
    alive = part.inbound_since_last_look()
    if alive:
        peer.peer_alive(now)
    return alive


def _stats(spi: int, n: int) -> list[dict]:
    return [{"spi_in": spi, "packets_in": n}]


def test_inbound_esp_keeps_dpd_quiet_and_silence_brings_it_back():
    net = make_pair(a_kw={"dpd_interval": 10, "dpd_retries": 3, "dpd_action": "restart"})
    ua, _ = established(net)
    a: IkePeer = net.a.peer
    part = _part(_StatsDatapath())
    packets = 0
    # 60 s of ESP arriving; the tunnel looks at the counters once a second
    while net.now < 60:
        packets += 7
        assert _feed(a, part, _stats(ua.pair.spi_in, packets), net.now)
        net.advance(net.now + 1)
    assert a.counters.get("dpd_sent", 0) == 0
    assert a.status()["dpd"]["last_seen"] >= 59
    # the counters stop moving: no liveness, and R-U-THERE goes out after the idle interval
    t_quiet = net.now
    while net.now < t_quiet + 15:
        assert not _feed(a, part, _stats(ua.pair.spi_in, packets), net.now)
        net.advance(net.now + 1)
    assert a.counters.get("dpd_sent", 0) >= 1
    assert a.counters.get("dpd_acked", 0) >= 1  # the peer is alive and answers
    assert not net.ev(net.a, PeerDead)


def test_esp_liveness_does_not_hide_a_dead_peer_and_follows_new_spis():
    net = make_pair(a_kw={"dpd_interval": 5, "dpd_retries": 2, "dpd_action": "clear"})
    ua, _ = established(net)
    a = net.a.peer
    part = _part(_StatsDatapath())
    assert _feed(a, part, _stats(ua.pair.spi_in, 10), net.now)
    # a rekeyed pair starts from 0 again: counts are per SPI, a new SPI with packets is traffic
    assert _feed(a, part, _stats(0x1234, 1) + _stats(ua.pair.spi_in, 10), net.now)
    assert not _feed(a, part, _stats(0x1234, 1), net.now)  # old SA gone, nothing new
    assert not _feed(a, part, [{"spi_in": None, "packets_in": 5}], net.now)
    # the peer goes silent (IKE and ESP): DPD declares it dead
    net.drop = lambda s, d: True
    for _ in range(40):
        _feed(a, part, _stats(0x1234, 1), net.now)
        net.advance(net.now + 1)
    assert net.ev(net.a, PeerDead)


# ----------------------------------------------------------------------- make-before-break


class _FakeDatapath:
    """Records calls; models the outbound choice of a data path with pending_outbound."""

    kind = "userspace"
    pending_outbound = True

    def __init__(self, refuse: set[int] | None = None):
        self.calls: list[tuple] = []
        self.installed: list[int] = []
        self.out: int | None = None
        self.refuse = refuse or set()

    def install(self, pair, *, outbound=True):
        if pair.spi_in in self.refuse:
            from cgwd.esp.datapath import SaInstallError

            raise SaInstallError("spi_in_use", f"SPI 0x{pair.spi_in:08x} refused", pair.spi_in)
        self.calls.append(("install", pair.spi_in, outbound))
        self.installed.append(pair.spi_in)
        if outbound or self.out is None:
            self.out = pair.spi_in

    def activate_outbound(self, spi_in, why=""):
        if spi_in not in self.installed:
            return False
        self.calls.append(("activate", spi_in))
        self.out = spi_in
        return True

    def remove(self, spi_in):
        self.calls.append(("remove", spi_in))
        if spi_in in self.installed:
            self.installed.remove(spi_in)
        if self.out == spi_in:
            self.out = self.installed[-1] if self.installed else None

    def remove_all(self):
        self.calls.append(("remove_all", 0))
        self.installed.clear()
        self.out = None

    def stats(self):
        return {"sas": []}


def _pair(spi_in: int, replaces: int | None = None, udp: bool = True):
    from cgwd.ipsec_sa import IpsecSaPair

    return IpsecSaPair(spi_in, spi_in + 1, "aes128", "sha1", b"k" * 16, b"K" * 16, b"i" * 20, b"I" * 20,
                       local_address="203.0.113.2", remote_address="198.51.100.2", udp_encap=udp,
                       replaces_spi_in=replaces)


def test_our_rekey_installs_receive_only_then_switches(monkeypatch):
    # the switch on the peer's first packet is the data path's (test_esp_datapath.py);
    # the tunnel installs our rekey's pair receive-only and activates it after the grace time
    monkeypatch.setattr(datapath_part, "OUTBOUND_GRACE", 0.2)
    states: dict[int, ChildState] = {}

    async def scenario():
        dp = _FakeDatapath()
        part = _part(dp, child_state=states.get)
        assert part.install(_pair(0x1000), ours=True)  # the first pair: at once, and it is the first
        assert dp.calls == [("install", 0x1000, True)] and dp.out == 0x1000
        assert not part.install(_pair(0x2000, 0x1000), ours=True)  # our rekey
        assert dp.calls[-1] == ("install", 0x2000, False) and dp.out == 0x1000
        assert set(part.pairs) == {0x1000, 0x2000}
        await asyncio.sleep(0.4)  # no sign of the peer: the grace time switches
        assert dp.calls[-1] == ("activate", 0x2000) and dp.out == 0x2000
        # the peer's rekey (we responded): the peer has it already, outbound at once
        part.install(_pair(0x4000, 0x2000), ours=False)
        assert dp.calls[-1] == ("install", 0x4000, True) and dp.out == 0x4000
        # raw ESP (no NAT-T) too: the data path sees its inbound ESP itself
        part.install(_pair(0x5000, 0x4000, udp=False), ours=True)
        assert dp.calls[-1] == ("install", 0x5000, False) and dp.out == 0x4000
        # a pending pair deleted before its grace time: its timer does nothing (and is gone)
        assert not part.remove(0x5000)
        assert 0x5000 not in part._grace
        await asyncio.sleep(0.4)
        assert ("activate", 0x5000) not in dp.calls and dp.out == 0x4000
        # a pair that lost a rekey collision (IKE keeps it as REKEYED) stays receive-only,
        # also after the grace time, unless the peer sends on it (the data path's switch)
        states.update({0x8000: ChildState.REKEYED, 0x9000: ChildState.REKEYED})
        part.install(_pair(0x8000, 0x4000), ours=False)
        part.install(_pair(0x9000, 0x4000), ours=True)
        await asyncio.sleep(0.4)
        assert dp.calls[-2:] == [("install", 0x8000, False), ("install", 0x9000, False)]
        assert dp.out == 0x4000
        # the last active pair deleted: the data path falls back to what it has, not the last
        assert not part.remove(0x4000)
        assert dp.out == 0x9000

    asyncio.run(scenario())


def test_a_refused_install_raises_with_the_reason_and_keeps_nothing():
    dp = _FakeDatapath(refuse={0x3000})
    part = _part(dp)
    try:
        part.install(_pair(0x3000), ours=False)
    except InstallRefused as exc:
        assert "0x00003000 refused" in str(exc) and exc.reason == "spi_in_use"
    else:
        raise AssertionError("install of a refused pair must raise InstallRefused")
    assert part.pairs == {} and dp.installed == []


def test_ike_deletes_a_refused_pair_at_the_peer_and_retries():
    # the data path refused what IKE negotiated: the peer must not keep sending into it,
    # and a new pair is negotiated later (backoff), the reason in status
    net = make_pair()
    ua, ub = established(net)
    a: IkePeer = net.a.peer
    a.install_failed(ua.pair.spi_in, "kernel has no GCM", net.now)
    net.advance(net.now + 0.1)
    assert a.child_state(ua.pair.spi_in) is None
    assert net.b.peer.child_state(ub.pair.spi_in) is None, "the peer must delete the refused pair too"
    assert "kernel has no GCM" in a.status()["last_error"]
    before = len(net.ev(net.a, IpsecSaUp))
    net.advance(net.now + 60)
    assert len(net.ev(net.a, IpsecSaUp)) > before, "a new pair is negotiated after the backoff"


def test_the_tunnel_offers_only_what_its_data_path_can_install(monkeypatch):
    # a kernel without GCM (the kernel path chosen by auto): IKE must not offer GCM, and a
    # config with nothing installable fails at start with a clear reason
    from cgwd.esp import kernel as kernel_mod
    from cgwd.ipsec_sa import EspCapabilities
    from cgwd.tunnel.ike_part import make_engine
    from cgwd.esp.datapath import capabilities_for

    no_gcm = EspCapabilities(frozenset({"aes128", "aes256"}), frozenset({"sha1", "sha256"}), why="no AES-GCM")
    monkeypatch.setattr(kernel_mod, "kernel_capabilities", lambda: no_gcm)
    allowed = capabilities_for("kernel").esp_allowed()
    cfg = parse_config(BASE.replace('inside_cidr = "169.254.10.0/30"\n', 'inside_cidr = "169.254.10.0/30"\n'
                                    '  esp_proposals = ["aes128gcm16-modp2048", "aes128-sha1-modp2048"]\n', 1)).tunnels[0]
    engine = make_engine(cfg, allowed)
    assert [a.name for a in engine.config.esp_algs] == ["aes128-sha1-modp2048"]
    assert capabilities_for("userspace").esp_allowed() >= {"aes128gcm16", "aes256gcm16"}
    only_gcm = parse_config(BASE.replace('inside_cidr = "169.254.10.0/30"\n', 'inside_cidr = "169.254.10.0/30"\n'
                                         '  esp_proposals = ["aes256gcm16-modp2048"]\n', 1)).tunnels[0]
    try:
        make_engine(only_gcm, allowed)
    except ValueError as exc:
        assert "none of the ESP proposals" in str(exc)
    else:
        raise AssertionError("a tunnel whose proposals the data path cannot install must not start")


def test_operator_ike_rekey_reaches_the_engine_of_either_version():
    # `cgwctl rekey TUNNEL --ike` -> control {"cmd": "rekey", "sa": "ike"} -> Tunnel.admin("rekey-ike")
    # -> IkePart.rekey_ike -> engine.rekey_ike(now), then the endpoint flushes the engine
    import types

    from cgwd.control import validate_request
    from cgwd.daemon import Daemon
    from cgwd.tunnel.ike_part import IkePart
    from cgwd.tunnel.tunnel import Tunnel

    calls = []

    class Engine:
        version = 2

        def rekey_ike(self, now):
            calls.append(("rekey_ike", now))

        def rekey_ipsec(self, now):
            calls.append(("rekey_ipsec", now))

    class Endpoint:
        def now(self):
            return 42.0

        def service(self, engine):
            calls.append(("service", engine))

    engine = Engine()
    part = IkePart.__new__(IkePart)
    part.engine, part.endpoint = engine, Endpoint()
    tunnel = types.SimpleNamespace(ike=part, name="tun1", engine=engine)
    assert Tunnel.admin(tunnel, "rekey-ike") == "tun1: IKE SA rekey started"
    assert calls == [("rekey_ike", 42.0), ("service", engine)]
    engine.version = 1
    assert "re-authentication" in Tunnel.admin(tunnel, "rekey-ike")
    calls.clear()
    Tunnel.admin(tunnel, "rekey")
    assert calls[0] == ("rekey_ipsec", 42.0)

    seen = []
    d = Daemon("/nonexistent.toml")
    d.tunnels = {"tun1": types.SimpleNamespace(admin=lambda a: seen.append(a) or "ok")}
    for req in ({"cmd": "rekey", "tunnel": "tun1", "sa": "ike"}, {"cmd": "rekey", "tunnel": "tun1"},
                {"cmd": "rekey", "tunnel": "tun1", "sa": "ipsec"}):
        assert validate_request(req) is None
        assert asyncio.run(d.handle_control(req))["ok"]
    assert seen == ["rekey-ike", "rekey", "rekey"]
    assert "ipsec" in validate_request({"cmd": "rekey", "tunnel": "tun1", "sa": "both"})


def test_bgp_hold_timer_expiry_renews_the_ipsec_sa_once_per_hold_time(monkeypatch):
    """The peer lost the pair without a word (seen: strongSwan deleting it with the ISAKMP SA
    a re-authentication replaced): BGP's hold timer is the first to notice, and the tunnel
    answers with a phase-2 rekey, at most once per hold time; other BGP downs do not."""
    import types

    from cgwd.bgp.session import SessionDown
    from cgwd.routing.table import RoutingTable  # noqa: F401 - BgpPart's type
    from cgwd.tunnel import tunnel as tunnel_mod
    from cgwd.tunnel.bgp_part import BgpPart
    from cgwd.tunnel.tunnel import Tunnel

    cfg = parse_config(BASE).tunnels[0]
    rekeys = []
    clock = [1000.0]
    monkeypatch.setattr(tunnel_mod.time, "monotonic", lambda: clock[0])
    tunnel = types.SimpleNamespace(name="t1", cfg=cfg, dp=types.SimpleNamespace(pairs={1: object()}),
                                   ike=types.SimpleNamespace(rekey=lambda: rekeys.append(clock[0])),
                                   _silent_rekey_at=float("-inf"))
    silent = lambda reason: Tunnel._bgp_silent(tunnel, reason)  # noqa: E731
    part = BgpPart.__new__(BgpPart)
    part.cfg, part._on_silent, part.up_since, part.last_error = cfg, silent, None, None
    hold = SessionDown("hold timer expired", (4, 0, b""), sent=True)
    part._on_event(hold)
    assert rekeys == [1000.0]
    clock[0] += cfg.hold_time - 1
    part._on_event(hold)
    assert rekeys == [1000.0]
    part._on_event(SessionDown("peer sent Cease", (6, 2, b""), sent=False))
    part._on_event(SessionDown("hold timer expired", (4, 0, b""), sent=False))
    clock[0] += 2
    part._on_event(SessionDown("peer sent Cease", (6, 2, b""), sent=False))
    assert rekeys == [1000.0]
    part._on_event(hold)
    assert rekeys == [1000.0, 1000.0 + cfg.hold_time + 1]
    tunnel.dp.pairs = {}
    clock[0] += 10 * cfg.hold_time
    part._on_event(hold)
    assert len(rekeys) == 2
