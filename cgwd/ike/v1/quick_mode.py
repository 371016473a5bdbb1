"""IKEv1 quick mode (RFC 2409 5.5, RFC 2407, RFC 3947 encapsulation modes): an IPsec SA pair.

    initiator                                   responder
    I1  --- 1: {HASH(1), SA, Ni, [KE], IDci, IDcr} ->  (a new QuickMode)   R2
        <-- 2: {HASH(2), SA, Nr, [KE], [IDs], [RESPONDER-LIFETIME]} --
    done --- 3: {HASH(3)} --------------------------->                    done
    (or WAIT_CONNECTED when the responder set the commit bit, done on its CONNECTED notify)

:data:`TRANSITIONS` fixes each role's step and the states it may lead to. The responder takes
the peer's selectors narrowed to its own configuration (or refuses with
INVALID-ID-INFORMATION); the initiator takes narrowed selectors only within what it asked for.
One KE per quick mode: with proposals of several PFS groups the KE is for the leading group.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, NATT_PORT, IpsecSaPair, is_aead

from .. import crypto
from ..events import SpiPending
from ..retransmit import Retransmission
from . import constants as C
from . import keys
from .algorithms import EspAlgs, EspChoice, esp_algs_from_transform, esp_transform
from .codec import (
    Attribute,
    Header,
    HashPayload,
    IdPayload,
    IkeDecodeError,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    decode_attributes,
    id_to_network,
    subnet_id,
)
from .main_mode import HALF_OPEN_LIMIT, HALF_OPEN_TIMEOUT, NONCE_LEN, IsakmpSa
from .messages import Drop, check_hash, ct_eq, decrypt, encrypt, hash_payloads
from .timers import Timer

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("cgwd.ike")


class Qm(enum.Enum):
    """Where a quick mode is (I: we initiated, R: the peer did)."""

    I1 = "QM_I1"  # message 1 sent
    WAIT_CONNECTED = "QM_WAIT_CONNECTED"  # message 3 sent; the responder committed: its CONNECTED next
    R1 = "QM_R1"  # (created)
    R2 = "QM_R2"  # message 2 sent
    DONE = "done"  # the pair is installed (the exchange is forgotten)


class QuickMode:
    """One quick mode in progress on an ISAKMP SA."""

    def __init__(self, sa: IsakmpSa, mid: int, initiator: bool, now: float) -> None:
        self.sa = sa
        self.order = 0  # when it was created, in the engine's event order
        self.mid = mid
        self.initiator = initiator
        self.state = Qm.I1 if initiator else Qm.R1
        self.created_at = now
        self.iv = b""
        self.ni = b""
        self.nr = b""
        self.dh: crypto.DiffieHellman | None = None
        self.gxy = b""
        self.spi_in = 0
        self.spi_out = 0
        self.offered: list[EspAlgs] = []
        self.choice: EspChoice | None = None
        self.pending: Retransmission | None = None
        self.replaces: int | None = None  # spi_in of the pair this rekeys
        self.commit = False
        self.id_ci: tuple[int, bytes] | None = None
        self.id_cr: tuple[int, bytes] | None = None
        # when we sent the message on which the peer installs the pair (QM3 as initiator,
        # QM2 as responder): the peer's order of installation in a rekey collision
        self.peer_install_at = 0.0


# ------------------------------------------------------------------ selectors


def narrow_ts(proposed: ipaddress.IPv4Network | ipaddress.IPv6Network,
              configured: ipaddress.IPv4Network | ipaddress.IPv6Network):
    """The part of a proposed selector within the configured one (prefixes: the smaller of
    the two when one holds the other), or None (disjoint, or of another family)."""
    if proposed.version != configured.version:
        return None
    if proposed.subnet_of(configured):
        return proposed
    if configured.subnet_of(proposed):
        return configured
    return None


def _ts_id(proposed: IdPayload, net) -> IdPayload:
    """The ID to answer a proposed one with: itself when narrowing kept it, else the subnet."""
    if id_to_network(proposed.id_type, proposed.data) == net:
        return IdPayload(id_type=proposed.id_type, protocol=proposed.protocol, port=proposed.port, data=proposed.data)
    t, d = subnet_id(net)
    return IdPayload(id_type=t, protocol=proposed.protocol, port=proposed.port, data=d)


def _ts_ids(host: Host) -> tuple[IdPayload, IdPayload]:
    ti, di = subnet_id(host.config.local_ts_net)
    tr, dr = subnet_id(host.config.remote_ts_net)
    return IdPayload(id_type=ti, data=di), IdPayload(id_type=tr, data=dr)


# ------------------------------------------------------------------ proposals


def pfs_groups(host: Host) -> list[int | None]:
    """The distinct PFS groups of the configured ESP proposals, in configuration order
    (None: a proposal without PFS)."""
    out: list[int | None] = []
    for a in host.config.esp_algs:
        if a.group not in out:
            out.append(a.group)
    return out


def esp_offer(host: Host) -> list[EspAlgs]:
    """Every configured ESP proposal, those of the leading PFS group first.

    A quick mode carries at most one KE payload (RFC 2409 5.5), so when the proposals name
    different PFS groups the KE is computed for the group of the first proposal (as strongSwan
    does) and the responder has to pick a proposal with that group. The leading group starts
    as the first proposal's; after a quick mode fails (rejected or unanswered) the next group
    leads, and the group of the last successful quick mode stays in front for the rekeys that
    follow.
    """
    algs = list(host.config.esp_algs)
    groups = pfs_groups(host)
    if len(groups) < 2:
        return algs
    lead = groups[host.pfs_index % len(groups)]
    return [a for a in algs if a.group == lead] + [a for a in algs if a.group != lead]


def failed(host: Host, qm: QuickMode) -> None:
    """Our quick mode failed: the next attempt leads with the next PFS group (its KE), in case
    the peer accepts only that one."""
    groups = pfs_groups(host)
    if qm.initiator and len(groups) > 1 and qm.offered:
        host.pfs_index = (groups.index(qm.offered[0].group) + 1) % len(groups)
        log.info("%s: next quick mode leads with PFS group %s", host.name,
                 C.GROUP_NAMES.get(groups[host.pfs_index], "none") if groups[host.pfs_index] else "none")


def encap_mode(sa: IsakmpSa) -> int:
    if not sa.nat.udp_encap:
        return C.ENCAP_TUNNEL
    return C.ENCAP_UDP_TUNNEL_RFC if sa.nat.method == "rfc" else C.ENCAP_UDP_TUNNEL_DRAFT


def ke_group(sap: SaPayload, ke: bytes | None) -> int | None:
    """The PFS group the initiator's KE payload belongs to (IKEv1 does not say).

    Initiators compute the KE for the group of their first proposal that has one (strongSwan,
    cgwd): the first offered group whose public value has the KE's length. Groups of equal
    length (modp2048 / modp2048s224 / modp2048s256) are told apart by that order, not guessed
    from the length alone.
    """
    if ke is None:
        return None
    for prop in sap.proposals:
        if prop.protocol != C.PROTO_IPSEC_ESP:
            continue
        for t in prop.transforms:
            for attr in t.attributes:
                if attr.type == C.P2_GROUP:
                    g = attr.value
                    if g in crypto.SUPPORTED_GROUPS and crypto.ke_length(g) == len(ke):
                        return g
                    break
    return None


# ------------------------------------------------------------------ starting


def initiate(host: Host, sa: IsakmpSa, now: float, replaces: int | None = None) -> QuickMode:
    """Message 1: a new pair (a rekey of ``replaces``, an inbound SPI of ours)."""
    cfg = host.config
    host.sched.cancel(Timer.CHILD_RETRY)
    qm = QuickMode(sa, host.new_mid(sa), True, now)
    qm.order = host.next_order()
    qm.replaces = replaces
    qm.spi_in = host.new_spi()
    qm.ni = host.rand(NONCE_LEN)
    qm.offered = esp_offer(host)
    group = qm.offered[0].group
    mode = encap_mode(sa)
    spi = qm.spi_in.to_bytes(4, "big")
    props = [
        Proposal(i + 1, C.PROTO_IPSEC_ESP, spi,
                 [esp_transform(a, 1, mode, cfg.ipsec_lifetime, cfg.ipsec_lifetime_kb)])
        for i, a in enumerate(qm.offered)
    ]
    rest: list[Payload] = [SaPayload(proposals=props), NoncePayload(data=qm.ni)]
    if group:
        qm.dh = host.new_dh(group)
        rest.append(KePayload(data=qm.dh.public))
    idci, idcr = _ts_ids(host)
    qm.id_ci = (idci.id_type, idci.data)
    qm.id_cr = (idcr.id_type, idcr.data)
    rest += [idci, idcr]
    qm.iv = keys.phase2_iv(sa.algs.hash, sa.p1_last_block, qm.mid)
    msg, last = encrypt(sa, C.EXCH_QUICK, qm.mid, hash_payloads(sa, qm.mid, rest), qm.iv)
    qm.iv = last
    sa.qm[qm.mid] = qm
    host.send_pending(qm, Timer.QM_RETRANSMIT, msg, now)
    log.info("%s: initiating quick mode mid=%08x (%s)%s", host.name, qm.mid,
             ", ".join(a.name for a in qm.offered), " rekey" if replaces else "")
    return qm


def receive(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote: tuple[str, int], local_port: int,
            now: float) -> None:
    """A quick-mode message on ``sa``: a new exchange of the peer's, or the next message of one
    in progress (the step its role and state allow)."""
    if not sa.established:
        raise Drop("quick_mode_before_phase1")
    mid = hdr.message_id
    qm = sa.qm.get(mid)
    if qm is None:
        host.check_mid(sa, mid, now)
        _respond(host, sa, hdr, data, remote, local_port, now)
        return
    step = TRANSITIONS.get((qm.initiator, qm.state))
    if step is None:
        raise Drop("unexpected_quick_mode")
    handler, allowed = step
    nxt = handler(host, sa, qm, hdr, data, remote, local_port, now)
    assert nxt in allowed, (qm.state, nxt)
    qm.state = nxt
    if nxt is Qm.DONE:
        _done(host, sa, qm, now)


def connected(host: Host, sa: IsakmpSa, n: NotifyPayload, now: float) -> bool:
    """The responder's CONNECTED notify (RFC 2408 4.8): the pair of the quick mode waiting for
    it is installed. Whether it was one we waited for."""
    for qm in list(sa.qm.values()):
        if qm.state is Qm.WAIT_CONNECTED and (not n.spi or int.from_bytes(n.spi, "big") == qm.spi_out):
            qm.state = Qm.DONE
            _done(host, sa, qm, now)
            return True
    return False


def _done(host: Host, sa: IsakmpSa, qm: QuickMode, now: float) -> None:
    host.drop_qm(sa, qm)
    sa.done_mids.add(qm.mid)
    host.install(sa, qm, now)
    if not qm.initiator and qm.commit:
        # we committed (RFC 2408 4.8): the initiator uses the pair once it has our CONNECTED
        host.send_info(sa, [NotifyPayload(notify_type=C.N_CONNECTED, protocol=C.PROTO_IPSEC_ESP,
                                          spi=qm.spi_in.to_bytes(4, "big"))])


# ------------------------------------------------------------------ responder


def _respond(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
    """Message 1 of the peer: choose a proposal and narrow its selectors, or refuse."""
    cfg = host.config
    responders = [q for q in sa.qm.values() if not q.initiator]
    if len(responders) >= HALF_OPEN_LIMIT:
        raise Drop("half_open_limit")
    iv = keys.phase2_iv(sa.algs.hash, sa.p1_last_block, hdr.message_id)
    payloads, last = decrypt(sa, hdr, data, iv)
    rest = check_hash(sa, hdr.message_id, payloads)
    sap = [p for p in rest if isinstance(p, SaPayload)]
    nonce = [p for p in rest if isinstance(p, NoncePayload)]
    ids = [p for p in rest if isinstance(p, IdPayload)]
    ke = [p for p in rest if isinstance(p, KePayload)]
    if len(sap) != 1 or len(nonce) != 1 or len(ids) not in (0, 2) or len(ke) > 1:
        raise Drop("bad_qm1")
    qm = QuickMode(sa, hdr.message_id, False, now)
    qm.order = host.next_order()
    qm.ni = nonce[0].data
    qm.commit = bool(hdr.flags & C.FLAG_COMMIT) or host.commit_bit
    kg = ke_group(sap[0], ke[0].data if ke else None)
    chosen = None
    for prop in sap[0].proposals:
        if prop.protocol != C.PROTO_IPSEC_ESP or len(prop.spi) != 4:
            continue
        for t in prop.transforms:
            ch = esp_algs_from_transform(t)
            # one KE per quick mode: a PFS group must be the one the initiator's KE is for
            if ch and ch.algs.group and ch.algs.group != kg:
                continue
            if ch and ch.algs in cfg.esp_algs:
                chosen = (prop, t, ch)
                break
        if chosen:
            break
    if chosen is None:
        host.error("quick mode: no acceptable proposal from peer")
        host.send_info(sa, [NotifyPayload(notify_type=C.N_NO_PROPOSAL_CHOSEN, protocol=C.PROTO_IPSEC_ESP,
                                          spi=sap[0].proposals[0].spi[:4])])
        sa.done_mids.add(hdr.message_id)
        raise Drop("no_proposal_chosen")
    prop, t, ch = chosen
    if ids:
        # the peer's selectors narrowed to ours (a part of them, or refused): both data paths
        # get what IKE agreed, never more than the configuration allows
        nets = [id_to_network(i.id_type, i.data) for i in ids]
        ours = None
        if None not in nets and nets[0].version == nets[1].version:
            ours = (host.narrow_ts(nets[1], cfg.local_ts_net), host.narrow_ts(nets[0], cfg.remote_ts_net))
        if ours is None or None in ours:
            host.send_info(sa, [NotifyPayload(notify_type=C.N_INVALID_ID_INFORMATION, protocol=C.PROTO_IPSEC_ESP,
                                              spi=prop.spi)])
            sa.done_mids.add(hdr.message_id)
            if ours is None:
                raise Drop("bad_ts", " ".join(i.describe() for i in ids))
            host.error(f"quick mode: peer's selectors {ids[0].describe()} <-> {ids[1].describe()} are outside "
                       f"ours ({cfg.local_ts_net} <-> {cfg.remote_ts_net})")
            raise Drop("ts_unacceptable")
        ids = [_ts_id(ids[0], ours[1]), _ts_id(ids[1], ours[0])]
        qm.id_ci = (ids[0].id_type, ids[0].data)
        qm.id_cr = (ids[1].id_type, ids[1].data)
    ch.lifetime = ch.lifetime or cfg.ipsec_lifetime
    shorter = ch.lifetime > cfg.ipsec_lifetime
    if shorter:
        ch.lifetime = cfg.ipsec_lifetime
    qm.choice = ch
    qm.spi_out = int.from_bytes(prop.spi, "big")
    qm.spi_in = host.new_spi()
    qm.nr = host.rand(NONCE_LEN)
    out: list[Payload] = [
        SaPayload(proposals=[Proposal(prop.number, C.PROTO_IPSEC_ESP, qm.spi_in.to_bytes(4, "big"), [t])]),
        NoncePayload(data=qm.nr),
    ]
    if shorter:
        # RFC 2407 4.6.3.1: tell the initiator we use a shorter lifetime
        life = [Attribute(C.P2_LIFE_TYPE, C.LIFE_SECONDS), Attribute(C.P2_LIFE_DURATION, ch.lifetime, True)]
        out.append(NotifyPayload(notify_type=C.N_RESPONDER_LIFETIME, protocol=C.PROTO_IPSEC_ESP,
                                 spi=qm.spi_in.to_bytes(4, "big"),
                                 data=b"".join(a.encode() for a in life)))
    if ch.algs.group:
        if len(ke) != 1:
            raise Drop("bad_qm1", "PFS group without KE")
        dh_ = host.new_dh(ch.algs.group)
        qm.gxy = dh_.shared_secret(ke[0].data)
        out.append(KePayload(data=dh_.public))
    out += ids
    host.authenticated(sa, remote, local_port, now)
    flags = C.FLAG_COMMIT if qm.commit else 0
    msg, last2 = encrypt(sa, C.EXCH_QUICK, qm.mid, hash_payloads(sa, qm.mid, out, qm.ni), last, flags)
    qm.iv = last2
    qm.state = Qm.R2
    qm.peer_install_at = now
    sa.qm[qm.mid] = qm
    host.sched.set(Timer.QM_HALF_OPEN, now + HALF_OPEN_TIMEOUT, qm)
    host.emit(SpiPending(qm.spi_in, HALF_OPEN_TIMEOUT))
    host.send(msg, sa)


def _qm3(host: Host, sa: IsakmpSa, qm: QuickMode, hdr: Header, data: bytes, remote, local_port: int,
         now: float) -> Qm:
    payloads, _ = decrypt(sa, hdr, data, qm.iv)
    if not payloads or not isinstance(payloads[0], HashPayload):
        raise Drop("missing_hash")
    want = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, b"\x00", qm.mid.to_bytes(4, "big"), qm.ni, qm.nr)
    if not ct_eq(payloads[0].data, want):
        raise Drop("bad_hash")
    host.authenticated(sa, remote, local_port, now)
    return Qm.DONE


# ------------------------------------------------------------------ initiator


def _responder_lifetime(host: Host, choice: EspChoice, n: NotifyPayload) -> None:
    try:
        attrs = decode_attributes(n.data)
    except IkeDecodeError:
        return
    life_type = None
    for a in attrs:
        if a.type == C.P2_LIFE_TYPE:
            life_type = a.value
        elif a.type == C.P2_LIFE_DURATION:
            if life_type == C.LIFE_SECONDS and a.value:
                choice.lifetime = min(choice.lifetime, a.value)
            elif life_type == C.LIFE_KILOBYTES and a.value:
                choice.lifetime_kb = min(choice.lifetime_kb, a.value) if choice.lifetime_kb else a.value
    log.info("%s: RESPONDER-LIFETIME: %ds %dkB", host.name, choice.lifetime, choice.lifetime_kb)


def _qm2(host: Host, sa: IsakmpSa, qm: QuickMode, hdr: Header, data: bytes, remote, local_port: int,
         now: float) -> Qm:
    cfg = host.config
    payloads, last = decrypt(sa, hdr, data, qm.iv)
    rest = check_hash(sa, qm.mid, payloads, qm.ni)
    sap = [p for p in rest if isinstance(p, SaPayload)]
    nonce = [p for p in rest if isinstance(p, NoncePayload)]
    if len(sap) != 1 or len(nonce) != 1 or len(sap[0].proposals) != 1 or len(sap[0].proposals[0].transforms) != 1:
        raise Drop("bad_qm2")
    prop = sap[0].proposals[0]
    if prop.protocol != C.PROTO_IPSEC_ESP or len(prop.spi) != 4:
        raise Drop("bad_qm2", "not an ESP proposal")
    choice = esp_algs_from_transform(prop.transforms[0])
    if choice is None or choice.algs not in qm.offered:
        host.error("quick mode: responder chose a transform we did not offer")
        raise Drop("bad_qm2", "unexpected transform")
    ids = [p for p in rest if isinstance(p, IdPayload)]
    if len(ids) not in (0, 2):
        raise Drop("bad_qm2", "need no or two ID payloads")
    if ids:
        got = [id_to_network(i.id_type, i.data) for i in ids]
        asked = [id_to_network(*qm.id_ci), id_to_network(*qm.id_cr)]
        if None in got or any(g.version != a.version or not g.subnet_of(a) for g, a in zip(got, asked)):
            host.qm_failed(sa, qm, now, f"quick mode: responder's selectors {ids[0].describe()} <-> "
                           f"{ids[1].describe()} are not within ours ({asked[0]} <-> {asked[1]})")
            raise Drop("bad_ts")
        qm.id_ci = (ids[0].id_type, ids[0].data)
        qm.id_cr = (ids[1].id_type, ids[1].data)
    qm.nr = nonce[0].data
    if choice.algs.group:
        ke = [p for p in rest if isinstance(p, KePayload)]
        if len(ke) != 1 or qm.dh is None or qm.dh.group != choice.algs.group:
            # not answerable with this exchange's KE: give up on it now (the next attempt
            # leads with another PFS group) instead of retransmitting in vain
            ours = C.GROUP_NAMES.get(qm.dh.group, "?") if qm.dh else "none"
            host.qm_failed(sa, qm, now, f"quick mode: responder chose {choice.algs.name} but our KE was for {ours}")
            raise Drop("bad_qm2", "PFS key exchange missing")
        qm.gxy = qm.dh.shared_secret(ke[0].data)
    qm.dh = None
    choice.lifetime = choice.lifetime or cfg.ipsec_lifetime
    for n in rest:
        if isinstance(n, NotifyPayload) and n.notify_type == C.N_RESPONDER_LIFETIME:
            _responder_lifetime(host, choice, n)
    qm.choice = choice
    qm.spi_out = int.from_bytes(prop.spi, "big")
    groups = pfs_groups(host)
    if choice.algs.group in groups:
        host.pfs_index = groups.index(choice.algs.group)
    host.authenticated(sa, remote, local_port, now)
    h3 = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, b"\x00", qm.mid.to_bytes(4, "big"), qm.ni, qm.nr)
    msg, _ = encrypt(sa, C.EXCH_QUICK, qm.mid, [HashPayload(data=h3)], last)
    host.send(msg, sa)
    qm.peer_install_at = now
    qm.pending = None
    host.sched.cancel(Timer.QM_RETRANSMIT, qm)
    if hdr.flags & C.FLAG_COMMIT:
        # the responder committed: use the SA only after its CONNECTED notify
        wait = cfg.retransmit_timeout * (2 ** (cfg.retransmit_tries + 1) - 1)
        host.sched.set(Timer.QM_CONNECTED, now + wait, qm)
        log.info("%s: quick mode mid=%08x: commit bit set, waiting for CONNECTED", host.name, qm.mid)
        return Qm.WAIT_CONNECTED
    return Qm.DONE


QmStep = Callable[["Host", IsakmpSa, QuickMode, Header, bytes, tuple[str, int], int, float], Qm]

#: (we initiated, state) -> (the step that takes the peer's next message, where it may lead)
TRANSITIONS: dict[tuple[bool, Qm], tuple[QmStep, frozenset[Qm]]] = {
    (True, Qm.I1): (_qm2, frozenset({Qm.DONE, Qm.WAIT_CONNECTED})),
    (False, Qm.R2): (_qm3, frozenset({Qm.DONE})),
}


# ------------------------------------------------------------------ the pair


def make_pair(host: Host, sa: IsakmpSa, qm: QuickMode, replaces_spi_in: int | None) -> IpsecSaPair:
    """KEYMAT (RFC 2409 5.5) cut into the pair's keys; the selectors agreed; its encapsulation."""
    cfg = host.config
    ch = qm.choice
    algs = ch.algs
    n = algs.keymat_len()
    ni, nr = (qm.ni, qm.nr)
    k_in = keys.keymat(sa.algs.hash, sa.keys.skeyid_d, C.PROTO_IPSEC_ESP, qm.spi_in, ni, nr, n, qm.gxy)
    k_out = keys.keymat(sa.algs.hash, sa.keys.skeyid_d, C.PROTO_IPSEC_ESP, qm.spi_out, ni, nr, n, qm.gxy)
    ek = ENC_KEY_BYTES[algs.encryption] + (GCM_SALT_BYTES if is_aead(algs.encryption) else 0)
    local_ts, remote_ts = cfg.local_ts_net, cfg.remote_ts_net
    if qm.id_ci and qm.id_cr:
        nci = id_to_network(*qm.id_ci)
        ncr = id_to_network(*qm.id_cr)
        if nci is not None and ncr is not None:
            local_ts, remote_ts = (nci, ncr) if qm.initiator else (ncr, nci)
    udp = ch.encap_mode in (C.ENCAP_UDP_TUNNEL_RFC, C.ENCAP_UDP_TUNNEL_DRAFT)
    return IpsecSaPair(
        spi_in=qm.spi_in,
        spi_out=qm.spi_out,
        encryption=algs.encryption,
        integrity=algs.integrity,
        enc_key_in=k_in[:ek],
        enc_key_out=k_out[:ek],
        integ_key_in=k_in[ek:] if algs.integrity else b"",
        integ_key_out=k_out[ek:] if algs.integrity else b"",
        local_address=cfg.local_address,
        remote_address=cfg.remote_address,
        udp_encap=udp,
        local_port=sa.nat.local_port if udp else NATT_PORT,
        remote_port=sa.nat.remote_port if udp else NATT_PORT,
        local_ts=local_ts,
        remote_ts=remote_ts,
        lifetime_seconds=ch.lifetime,
        lifetime_kilobytes=ch.lifetime_kb,
        pfs_group=algs.group,
        replaces_spi_in=replaces_spi_in,
    )
