"""Golden transcripts of the IKEv1 engine: the wire bytes of whole exchanges, replayed.

Each scenario drives two engines in memory (tests/unit/test_ike_session.py's Net) with
deterministic randomness (seeded ``random_bytes``) and Diffie-Hellman key pairs taken in
order from a committed pool (tests/unit/data/ike_golden/keys.json, made once with
``cryptography``), on a fake clock. Every datagram (time, sender, ports, bytes) and every event
is compared with the committed transcript: a refactoring of the engine must reproduce them
byte for byte (main mode and quick mode in both roles, PFS, rekeys of both phases from either
side and crossing, DPD and a DPD restart, NAT-T with the float, keepalives and a port change,
the commit bit, RESPONDER-LIFETIME, deletes).

Record (only when the wire format is meant to change): ``python tests/unit/test_ike_golden.py --record``
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from cgwd.ike import crypto  # noqa: E402
from test_ike_session import Net, make_pair  # noqa: E402

DATA = Path(__file__).parent / "data" / "ike_golden"
KEYS = DATA / "keys.json"


class KeyPool:
    """DH key pairs of each group, handed out in order (a fresh one per call)."""

    def __init__(self, keys: dict[str, list[str]], record: bool) -> None:
        self.keys = keys
        self.record = record
        self.used: dict[int, int] = {}

    def __call__(self, group: int) -> crypto.DiffieHellman:
        i = self.used.get(group, 0)
        self.used[group] = i + 1
        pool = self.keys.setdefault(str(group), [])
        if i >= len(pool):
            if not self.record:
                raise AssertionError(f"key pool of group {group} exhausted: the transcript diverged")
            dh = crypto.DiffieHellman(group)
            der = dh._priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
            pool.append(der.hex())
            return dh
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = serialization.load_der_private_key(bytes.fromhex(pool[i]), None)
        return crypto.DiffieHellman(group, private_key=key)


class Recorder:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.lines: list[list] = []
        orig = net.pump

        def pump(rounds: int = 100) -> None:
            n_log = len(net.log)
            n_ev = {id(s): len(s.events) for s in (net.a, net.b)}
            orig(rounds)
            for side, d in net.log[n_log:]:
                self.lines.append(["dgram", side, d.local_port, list(d.remote), d.raw, d.data.hex()])
            for name, s in (("a", net.a), ("b", net.b)):
                for t, e in s.events[n_ev[id(s)]:]:
                    self.lines.append(["event", name, round(t, 6), repr(e)])

        net.pump = pump


def _pools(keys: dict, record: bool) -> tuple[KeyPool, KeyPool]:
    # one pool per side, each its own part of the committed keys
    return KeyPool(keys.setdefault("a", {}), record), KeyPool(keys.setdefault("b", {}), record)


def _net(keys: dict, record: bool, *args, **kw) -> tuple[Net, Recorder]:
    net = make_pair(*args, **kw)
    pa, pb = _pools(keys, record)
    net.a.peer._dh_factory = pa
    net.b.peer._dh_factory = pb
    return net, Recorder(net)


# ------------------------------------------------------------------ scenarios


def scenario_aws_defaults(keys, record):
    """AWS's defaults (aes128-sha1-modp1024, PFS modp1024): main and quick mode, DPD, stop."""
    net, rec = _net(keys, record, seed=11)
    net.a.peer.start(0.0)
    net.pump()
    net.advance(35)  # DPD probes and their ACKs (10 s idle)
    net.a.peer.stop(net.now)
    net.pump()
    return rec.lines


def scenario_rekeys(keys, record):
    """Both phases rekeyed by us, by the peer, and crossing rekeys (a collision)."""
    net, rec = _net(keys, record, ["aes256-sha256-modp2048"], ["aes128-sha256-modp2048"],
                    a_kw={"ipsec_lifetime": 300, "rekey_margin": 60, "rekey_fuzz": 100, "ike_lifetime": 600,
                          "dpd_interval": 30},
                    b_kw={"initiator": True, "ipsec_lifetime": 300, "ike_lifetime": 900, "dpd_interval": 0,
                          "rekey_margin": 30, "rekey_fuzz": 0},
                    seed=12)
    net.a.peer.start(0.0)
    net.pump()
    net.b.peer._started = True
    net.advance(700)  # our phase-2 rekeys and a re-authentication
    net.b.peer.rekey_ipsec(net.now)  # the peer's phase-2 rekey
    net.pump()
    net.advance(net.now + 10)
    net.b.peer.rekey_ike(net.now)  # the peer's re-authentication
    net.pump()
    net.advance(net.now + 10)
    net.a.peer.rekey_ipsec(net.now)  # crossing rekeys
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    net.advance(net.now + 40)
    return rec.lines


def scenario_dpd_restart(keys, record):
    """The link dies: DPD declares the peer dead, restarts with INITIAL-CONTACT once it is back."""
    net, rec = _net(keys, record, ["aes128-sha1-modp2048"], ["aes128-sha1"],
                    a_kw={"dpd_interval": 10, "dpd_retries": 3}, b_kw={"dpd_interval": 0}, seed=13)
    net.a.peer.start(0.0)
    net.pump()
    net.advance(20)
    net.drop = lambda s, d: True
    net.advance(70)
    net.drop = lambda s, d: False
    net.advance(200)
    return rec.lines


def scenario_nat_t(keys, record):
    """Behind a NAT: NAT-D, the float to 4500, keepalives, a NAT rebinding followed, deletes."""
    net, rec = _net(keys, record, ["aes128-sha1-ecp256"], ["aes256gcm16-ecp256"],
                    a_kw={"local_address": "10.0.0.2", "local_id": "203.0.113.5", "dpd_interval": 10},
                    b_kw={"remote_address": "203.0.113.5", "dpd_interval": 0},
                    a_public="203.0.113.5", a_ports={500: 31000, 4500: 31001}, seed=14)
    net.a.peer.start(0.0)
    net.pump()
    net.advance(45)
    net.a.port_map[4500] = 40000  # the NAT box rebinds
    net.advance(net.now + 30)
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    net.advance(net.now + 10)
    net.b.peer.stop(net.now)  # the peer deletes everything
    net.pump()
    net.advance(net.now + 5)
    return rec.lines


def scenario_peer_initiates(keys, record):
    """The peer initiates (we respond), with the commit bit, a shorter lifetime of ours
    (RESPONDER-LIFETIME), proposals we partly refuse and several PFS groups."""
    net, rec = _net(keys, record, ["aes256-sha512-ecp384"], ["aes256-sha384-ecp384", "aes128-sha1-modp2048"],
                    a_kw={"initiator": False, "ipsec_lifetime": 1200},
                    b_kw={"initiator": True, "ike": ["aes128-sha1-modp1024", "aes256-sha512-ecp384"],
                          "esp": ["aes128-sha1-modp2048", "aes256-sha384-ecp384"], "ipsec_lifetime": 3600},
                    seed=15)
    net.a.peer.commit_bit = True
    net.b.peer.start(0.0)
    net.pump()
    net.advance(30)
    net.b.peer.stop(net.now)
    net.pump()
    return rec.lines


SCENARIOS = {f.__name__.removeprefix("scenario_"): f for f in (
    scenario_aws_defaults, scenario_rekeys, scenario_dpd_restart, scenario_nat_t, scenario_peer_initiates)}


def _keys() -> dict:
    return json.loads(KEYS.read_text())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_transcript_replays_byte_for_byte(name):
    want = json.loads((DATA / f"{name}.json").read_text())
    got = SCENARIOS[name](_keys(), record=False)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{name}: line {i} differs:\n got  {g}\n want {w}"
    assert len(got) == len(want), f"{name}: {len(got)} lines, the transcript has {len(want)}"
    dgrams = [x for x in want if x[0] == "dgram"]
    assert len(dgrams) >= 10


def test_transcripts_cover_what_they_claim():
    from cgwd.ike.v1 import constants as C
    from cgwd.ike.v1.codec import decode_header

    exchanges = set()
    raw = notifies = 0
    for name in SCENARIOS:
        for line in json.loads((DATA / f"{name}.json").read_text()):
            if line[0] != "dgram":
                continue
            data = bytes.fromhex(line[5])
            if line[4]:
                raw += 1
                continue
            h = decode_header(data)
            exchanges.add((line[1], h.exchange))
            notifies += h.exchange == C.EXCH_INFORMATIONAL
    for side in "ab":
        assert {(side, C.EXCH_MAIN), (side, C.EXCH_QUICK), (side, C.EXCH_INFORMATIONAL)} <= exchanges
    assert raw > 0 and notifies > 20  # keepalives, DPD / deletes


def record() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    keys = _keys() if KEYS.exists() else {}
    for name, f in SCENARIOS.items():
        lines = f(keys, record=True)
        (DATA / f"{name}.json").write_text(json.dumps(lines, indent=0) + "\n")
        print(f"{name}: {len(lines)} lines")
    KEYS.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        record()
    else:
        print(__doc__)
