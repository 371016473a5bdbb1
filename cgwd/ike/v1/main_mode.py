"""IKEv1 main mode with pre-shared keys (RFC 2409 5, RFC 3947 NAT-D): the phase-1 exchange.

    initiator                                   responder
    I1  --- 1: SA, VIDs ---------------------->  (a new IsakmpSa)        R2
    I3  <-- 2: SA, VIDs -----------------------
        --- 3: KE, Ni, NAT-D ----------------->                          R4
    I5  <-- 4: KE, Nr, NAT-D ------------------  (DH: return routable)
        --- 5: {IDii, HASH_I, [INITIAL-CONTACT]} ->                      ESTABLISHED
    ESTABLISHED <-- 6: {IDir, HASH_R} ---------

Each role's steps are fixed by :data:`TRANSITIONS`: the message a state accepts and the state
it leads to. A step checks everything before it changes anything; a message it cannot take is
a counted drop (:class:`cgwd.ike.v1.messages.Drop`). The engine (:class:`Host`) owns what the
exchange creates (the SA list, the schedule, the tunnel's NAT state once authenticated).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cgwd.ipsec_sa import IKE_PORT, NATT_PORT

from .. import crypto
from ..natt import NatState, nat_detection_data
from ..retransmit import Retransmission
from . import constants as C
from . import keys
from .algorithms import IkeAlgs, ike_algs_from_transform
from .codec import (
    HashPayload,
    Header,
    IdPayload,
    KePayload,
    NatDPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    Transform,
    VendorIdPayload,
    describe_id,
    encode_message,
)
from .messages import Drop, ct_eq, decrypt, encrypt, plain
from .timers import Timer

if TYPE_CHECKING:
    from .host import Host
    from .quick_mode import QuickMode

log = logging.getLogger("cgwd.ike")

NONCE_LEN = 32
# Responder main modes that have not proved the peer's address (only MM1 seen: no DH done,
# cheap) are bounded by UNVERIFIED_LIMIT, the oldest giving way to a new one; those whose MM3
# echoed our cookie (return routability: the DH is computed) by HALF_OPEN_LIMIT. A spoofed MM1
# never refuses the real peer: it can only push out another unverified exchange, and the DH
# work it cannot ask for is what the engine's DH budget rations.
UNVERIFIED_LIMIT = 256
HALF_OPEN_LIMIT = 8
HALF_OPEN_TIMEOUT = 30.0
MAX_SA_PAYLOAD = 8192  # bytes of a peer's main-mode SA payload kept for HASH_I/HASH_R
MIN_P1_LIFETIME = 30  # seconds: a peer proposing a shorter ISAKMP SA lifetime is refused


class Mm(enum.Enum):
    """Where an ISAKMP SA is in its main mode (I: we initiated, R: the peer did)."""

    I1 = "MM_I1"  # message 1 sent
    I3 = "MM_I3"  # message 3 sent
    I5 = "MM_I5"  # message 5 sent
    R0 = "MM_R0"  # (created)
    R2 = "MM_R2"  # message 2 sent: the peer's address is not proved yet
    R4 = "MM_R4"  # message 4 sent: return routable, the DH is done
    ESTABLISHED = "ESTABLISHED"


class IsakmpSa:
    """One ISAKMP SA (phase 1): cookies, keys, IVs, its NAT state and ports, its exchanges."""

    def __init__(self, icookie: bytes, rcookie: bytes, initiator: bool, now: float) -> None:
        self.icookie = icookie
        self.rcookie = rcookie
        self.initiator = initiator
        self.state = Mm.I1 if initiator else Mm.R0
        self.created_at = now
        self.algs: IkeAlgs | None = None
        self.lifetime = 0
        self.dh: crypto.DiffieHellman | None = None
        self.ni = b""
        self.nr = b""
        self.gxi = b""
        self.gxr = b""
        self.keys: keys.Phase1Keys | None = None
        self.iv = b""
        self.p1_last_block = b""
        self.sai_b = b""
        # NAT-T method (nat.method: "rfc" | "draft" | None), its detection and the ports this
        # SA's messages use: the tunnel's once the SA is authenticated
        self.nat = NatState()
        self.natt_vid = C.VID_NATT_DRAFT_02N
        self.peer_dpd = False
        self.peer_vids: list[bytes] = []
        self.established_at: float | None = None
        self.order = 0  # when it was established, in the engine's event order (newest: largest)
        self.begun = 0  # when its main mode began (message 1 sent or received), in the same order
        self.pending: Retransmission | None = None
        self.send_initial_contact = False
        self.worn_out = False  # it has seen as many message IDs as it may: no new exchange on it
        self.qm: dict[int, QuickMode] = {}
        self.done_mids: set[int] = set()  # message IDs seen (quick mode, informational): its whole life
        self.replaces: IsakmpSa | None = None
        self.retired_by_us = False  # our re-authentication replaced it: deleted after a grace time

    @property
    def established(self) -> bool:
        return self.state is Mm.ESTABLISHED

    @property
    def cookies(self) -> bytes:
        return self.icookie + self.rcookie

    def hash_size(self) -> int:
        return crypto.HASH_SIZES[self.algs.hash] if self.algs else 20


# ------------------------------------------------------------------ starting


def vendor_ids(host: Host) -> list[Payload]:
    vids = [VendorIdPayload(data=C.VID_DPD)]
    if host.config.nat_traversal != "off":
        vids += [VendorIdPayload(data=v) for v in (C.VID_NATT_RFC3947, *C.NATT_DRAFT_VIDS)]
    return vids


def initiate(host: Host, now: float, replaces: IsakmpSa | None = None) -> IsakmpSa:
    """Message 1: a new ISAKMP SA of ours (a re-authentication of ``replaces``)."""
    cfg = host.config
    sa = IsakmpSa(host.rand(8), bytes(8), True, now)
    sa.begun = host.next_order()
    # INITIAL-CONTACT whenever we hold no SA with the peer (after start, after a DPD
    # restart...): the peer may drop what it still has of us (RFC 2407 4.6.3.3)
    sa.send_initial_contact = replaces is None and not len(host.children) and host.current_sa() is None
    sa.replaces = replaces
    if replaces is not None:
        # a re-authentication goes where the SA it replaces goes (4500 once floated);
        # a fresh connection starts on port 500 (and floats again after NAT-D)
        sa.nat.local_port, sa.nat.remote_port = replaces.nat.local_port, replaces.nat.remote_port
    transforms = [Transform(i + 1, C.KEY_IKE, a.attributes(cfg.ike_lifetime)) for i, a in enumerate(cfg.ike_algs)]
    sa_payload = SaPayload(proposals=[Proposal(1, C.PROTO_ISAKMP, b"", transforms)])
    hdr = Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0)
    msg = encode_message(hdr, [sa_payload, *vendor_ids(host)])
    sa.sai_b = sa_payload.body
    host.sas.append(sa)
    host.send_pending(sa, Timer.P1_RETRANSMIT, msg, now)
    log.info("%s: initiating main mode (%s)", host.name, ", ".join(a.name for a in cfg.ike_algs))
    return sa


def respond(host: Host, hdr: Header, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
    """Message 1 of the peer: cheap to answer (no DH), and it changes nothing of the tunnel
    (ports, NAT state): the SA it creates has its own."""
    cfg = host.config
    if hdr.flags & C.FLAG_ENCRYPTION:
        raise Drop("unexpected_encryption")
    payloads = plain(hdr, data)
    sap = [p for p in payloads if isinstance(p, SaPayload)]
    if len(sap) != 1 or len(sap[0].proposals) != 1:
        raise Drop("bad_mm1", "need exactly one SA payload with one proposal")
    if len(sap[0].body) > MAX_SA_PAYLOAD:
        raise Drop("bad_mm1", "SA payload too large")
    prop = sap[0].proposals[0]
    if prop.protocol != C.PROTO_ISAKMP:
        raise Drop("bad_mm1", "not an ISAKMP proposal")
    chosen = None
    for t in prop.transforms:
        r = ike_algs_from_transform(t)
        # a lifetime the peer proposes is taken if shorter than ours (never longer), but a
        # very short one is no lifetime to agree on
        if r and r[0] in cfg.ike_algs and not 0 < r[1] < MIN_P1_LIFETIME:
            chosen = (t, *r)
            break
    if chosen is None:
        host.error("main mode: no acceptable proposal from peer")
        n = NotifyPayload(notify_type=C.N_NO_PROPOSAL_CHOSEN, protocol=C.PROTO_ISAKMP, spi=hdr.icookie + hdr.rcookie)
        msg = encode_message(Header(hdr.icookie, hdr.rcookie, 0, C.EXCH_INFORMATIONAL, 0, 0), [n])
        host.send_to(msg, remote[1], local_port)
        raise Drop("no_proposal_chosen")
    t, algs, lifetime = chosen
    host.make_room(lambda s: s.state is Mm.R2, UNVERIFIED_LIMIT)
    sa = IsakmpSa(hdr.icookie, host.rand(8), False, now)
    sa.begun = host.next_order()
    sa.nat.local_port, sa.nat.remote_port = local_port, remote[1]
    sa.algs = algs
    sa.lifetime = min(lifetime or cfg.ike_lifetime, cfg.ike_lifetime)
    sa.sai_b = sap[0].body
    _note_vids(host, sa, payloads)
    # the chosen transform with the lifetime we take (as strongSwan answers with its own)
    t = Transform(t.number, C.KEY_IKE, algs.attributes(sa.lifetime))
    reply = [SaPayload(proposals=[Proposal(prop.number, C.PROTO_ISAKMP, b"", [t])]), VendorIdPayload(data=C.VID_DPD)]
    if sa.nat.method == "rfc":
        reply.append(VendorIdPayload(data=C.VID_NATT_RFC3947))
    elif sa.nat.method == "draft":
        reply.append(VendorIdPayload(data=sa.natt_vid))
    sa.state = Mm.R2
    host.sas.append(sa)
    host.sched.set(Timer.P1_HALF_OPEN, now + HALF_OPEN_TIMEOUT, sa)
    host.send(encode_message(Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0), reply), sa)
    log.info("%s: responding to main mode (%s)", host.name, algs.name)


def receive(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote: tuple[str, int], local_port: int,
            now: float) -> None:
    """A later main-mode message of ``sa``: the step its role and state allow, then the next
    state (and, reaching ESTABLISHED, the engine's :meth:`Host.established`)."""
    if hdr.message_id != 0:
        raise Drop("bad_message_id")
    step = TRANSITIONS.get((sa.initiator, sa.state))
    if step is None:
        raise Drop("unexpected_main_mode")
    handler, nxt = step
    handler(host, sa, hdr, data, remote, local_port, now)
    sa.state = nxt
    if nxt is Mm.ESTABLISHED:
        host.established(sa, now)


# ------------------------------------------------------------------ helpers


def _note_vids(host: Host, sa: IsakmpSa, payloads: list[Payload]) -> None:
    vids = [p.data for p in payloads if isinstance(p, VendorIdPayload)]
    sa.peer_vids = vids
    sa.peer_dpd = C.VID_DPD in vids
    if host.config.nat_traversal == "off":
        sa.nat.method = None
    elif C.VID_NATT_RFC3947 in vids:
        sa.nat.method = "rfc"
    else:
        for v in C.NATT_DRAFT_VIDS[::-1]:
            if v in vids:
                sa.nat.method = "draft"
                sa.natt_vid = v
                break


def _nat_hash(sa: IsakmpSa, addr: str, port: int) -> bytes:
    return crypto.hash_(sa.algs.hash, nat_detection_data(sa.icookie, sa.rcookie, addr, port))


def _nat_d_payloads(host: Host, sa: IsakmpSa) -> list[Payload]:
    cfg = host.config
    if not sa.nat.method:
        return []
    draft = sa.nat.method == "draft"
    h_remote = _nat_hash(sa, cfg.remote_address, sa.nat.remote_port)
    if cfg.nat_traversal == "force":
        h_local = crypto.hash_(sa.algs.hash, host.rand(32))
    else:
        h_local = _nat_hash(sa, cfg.local_address, sa.nat.local_port)
    return [NatDPayload(data=h_remote, draft=draft), NatDPayload(data=h_local, draft=draft)]


def _detect_nat(host: Host, sa: IsakmpSa, payloads: list[Payload], remote: tuple[str, int], local_port: int) -> None:
    """NAT-D of ``sa`` (RFC 3947 3.2); the tunnel takes it when the SA is established."""
    if not sa.nat.method:
        return
    nd = [p.data for p in payloads if isinstance(p, NatDPayload)]
    if len(nd) < 2:
        log.info("%s: peer sent NAT-T vendor id but no NAT-D payloads", host.name)
        sa.nat.method = None
        return
    local_behind = nd[0] != _nat_hash(sa, host.config.local_address, local_port)
    peer_behind = _nat_hash(sa, remote[0], remote[1]) not in nd[1:]
    if host.config.nat_traversal == "force":
        local_behind = True
    sa.nat.local_behind = local_behind
    sa.nat.peer_behind = peer_behind
    sa.nat.detected = True
    log.info("%s: NAT detection: local behind NAT=%s, peer behind NAT=%s", host.name, local_behind, peer_behind)


def _compute_keys(host: Host, sa: IsakmpSa, peer_ke: bytes) -> None:
    gxy = sa.dh.shared_secret(peer_ke)
    skeyid = keys.skeyid_psk(sa.algs.hash, host.config.psk, sa.ni, sa.nr)
    sa.keys = keys.derive_phase1(sa.algs.hash, skeyid, gxy, sa.icookie, sa.rcookie, sa.algs.enc_bits // 8)
    sa.iv = keys.phase1_iv(sa.algs.hash, sa.gxi, sa.gxr)
    sa.dh = None  # forget the private value


def _hash_i(sa: IsakmpSa, idii_b: bytes) -> bytes:
    return crypto.prf(sa.algs.hash, sa.keys.skeyid, sa.gxi, sa.gxr, sa.icookie, sa.rcookie, sa.sai_b, idii_b)


def _hash_r(sa: IsakmpSa, idir_b: bytes) -> bytes:
    return crypto.prf(sa.algs.hash, sa.keys.skeyid, sa.gxr, sa.gxi, sa.rcookie, sa.icookie, sa.sai_b, idir_b)


def _my_id(host: Host) -> IdPayload:
    t, d = host.config.local_id_tuple
    return IdPayload(id_type=t, protocol=0, port=0, data=d)


def _check_peer_id(host: Host, idp: IdPayload) -> None:
    want = host.config.remote_id_tuple
    if (idp.id_type, idp.data) != want:
        host.error(f"peer identity {idp.describe()} does not match expected {describe_id(*want)}")
        raise Drop("id_mismatch", idp.describe())


def _decrypt_mm(host: Host, sa: IsakmpSa, hdr: Header, data: bytes) -> tuple[list[Payload], bytes]:
    try:
        return decrypt(sa, hdr, data, sa.iv)
    except Drop as d:
        if d.reason == "decrypt_failed":
            host.error("main mode: cannot decrypt the peer's identity message (pre-shared key mismatch?)")
            host.count("auth_failures")
        raise


def _initial_contact_in(host: Host, sa: IsakmpSa, payloads: list[Payload]) -> None:
    for p in payloads:
        if isinstance(p, NotifyPayload) and p.notify_type == C.N_INITIAL_CONTACT:
            host.initial_contact(sa)


# ------------------------------------------------------------------ initiator steps


def _mm2(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
    cfg = host.config
    payloads = plain(hdr, data)
    sap = [p for p in payloads if isinstance(p, SaPayload)]
    if len(sap) != 1 or len(sap[0].proposals) != 1 or len(sap[0].proposals[0].transforms) != 1:
        raise Drop("bad_mm2")
    r = ike_algs_from_transform(sap[0].proposals[0].transforms[0])
    if r is None or r[0] not in cfg.ike_algs:
        raise Drop("bad_mm2", "responder chose a transform we did not offer")
    sa.rcookie = hdr.rcookie
    if sa.rcookie == bytes(8):
        raise Drop("bad_mm2", "zero responder cookie")
    sa.algs, lifetime = r
    sa.lifetime = min(lifetime or cfg.ike_lifetime, cfg.ike_lifetime)
    _note_vids(host, sa, payloads)
    sa.dh = host.new_dh(sa.algs.group)
    sa.gxi = sa.dh.public
    sa.ni = host.rand(NONCE_LEN)
    out: list[Payload] = [KePayload(data=sa.gxi), NoncePayload(data=sa.ni)]
    out += _nat_d_payloads(host, sa)
    host.send_pending(sa, Timer.P1_RETRANSMIT, encode_message(Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0), out),
                      now)


def _mm4(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
    payloads = plain(hdr, data)
    ke = [p for p in payloads if isinstance(p, KePayload)]
    nonce = [p for p in payloads if isinstance(p, NoncePayload)]
    if len(ke) != 1 or len(nonce) != 1:
        raise Drop("bad_mm4", "need KE and nonce")
    if len(ke[0].data) != crypto.ke_length(sa.algs.group):
        raise Drop("bad_ke_length")
    sa.gxr = ke[0].data
    sa.nr = nonce[0].data
    _compute_keys(host, sa, sa.gxr)
    _detect_nat(host, sa, payloads, (host.config.remote_address, sa.nat.remote_port), sa.nat.local_port)
    if sa.nat.udp_encap and sa.nat.local_port == IKE_PORT:
        sa.nat.float_to_natt()
    idp = _my_id(host)
    out: list[Payload] = [idp, HashPayload(data=_hash_i(sa, idp.body))]
    if sa.send_initial_contact:
        out.append(NotifyPayload(notify_type=C.N_INITIAL_CONTACT, protocol=C.PROTO_ISAKMP, spi=sa.cookies))
    msg, last = encrypt(sa, C.EXCH_MAIN, 0, out, sa.iv)
    sa.iv = last
    host.send_pending(sa, Timer.P1_RETRANSMIT, msg, now)


def _mm6(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
    payloads, last = _decrypt_mm(host, sa, hdr, data)
    idp = [p for p in payloads if isinstance(p, IdPayload)]
    hp = [p for p in payloads if isinstance(p, HashPayload)]
    if len(idp) != 1 or len(hp) != 1:
        raise Drop("bad_mm6")
    if not ct_eq(hp[0].data, _hash_r(sa, idp[0].body)):
        host.error("main mode: HASH_R mismatch (pre-shared key wrong?)")
        raise Drop("bad_hash")
    _check_peer_id(host, idp[0])
    sa.p1_last_block = last
    _initial_contact_in(host, sa, payloads)


# ------------------------------------------------------------------ responder steps


def _mm3(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
    """MM3 echoed our cookie (return routability): the DH work, rationed."""
    payloads = plain(hdr, data)
    ke = [p for p in payloads if isinstance(p, KePayload)]
    nonce = [p for p in payloads if isinstance(p, NoncePayload)]
    if len(ke) != 1 or len(nonce) != 1:
        raise Drop("bad_mm3", "need KE and nonce")
    if len(ke[0].data) != crypto.ke_length(sa.algs.group):
        raise Drop("bad_ke_length")
    if not host.dh_budget.take(now):
        raise Drop("dh_rate_limit")  # the peer retransmits MM3
    host.make_room(lambda s: s.state is Mm.R4, HALF_OPEN_LIMIT)
    sa.dh = host.new_dh(sa.algs.group)
    sa.gxi = ke[0].data
    sa.gxr = sa.dh.public
    sa.ni = nonce[0].data
    sa.nr = host.rand(NONCE_LEN)
    _compute_keys(host, sa, sa.gxi)
    _detect_nat(host, sa, payloads, remote, local_port)
    out: list[Payload] = [KePayload(data=sa.gxr), NoncePayload(data=sa.nr)]
    out += _nat_d_payloads(host, sa)
    host.send(encode_message(Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0), out), sa)


def _mm5(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
    payloads, last = _decrypt_mm(host, sa, hdr, data)
    idp = [p for p in payloads if isinstance(p, IdPayload)]
    hp = [p for p in payloads if isinstance(p, HashPayload)]
    if len(idp) != 1 or len(hp) != 1:
        raise Drop("bad_mm5")
    if not ct_eq(hp[0].data, _hash_i(sa, idp[0].body)):
        host.error("main mode: HASH_I mismatch (pre-shared key wrong?)")
        host.count("auth_failures")
        raise Drop("bad_hash")
    _check_peer_id(host, idp[0])
    if local_port == NATT_PORT:
        # the initiator floated (authenticated now): our answers follow it
        sa.nat.local_port = NATT_PORT
        sa.nat.remote_port = remote[1]
    idr = _my_id(host)
    out: list[Payload] = [idr, HashPayload(data=_hash_r(sa, idr.body))]
    msg, last6 = encrypt(sa, C.EXCH_MAIN, 0, out, last)
    sa.p1_last_block = last6
    host.send(msg, sa)
    _initial_contact_in(host, sa, payloads)


Step = Callable[["Host", IsakmpSa, Header, bytes, tuple[str, int], int, float], None]

#: (we initiated, state) -> (the step that takes the peer's next message, the state after it)
TRANSITIONS: dict[tuple[bool, Mm], tuple[Step, Mm]] = {
    (True, Mm.I1): (_mm2, Mm.I3),
    (True, Mm.I3): (_mm4, Mm.I5),
    (True, Mm.I5): (_mm6, Mm.ESTABLISHED),
    (False, Mm.R2): (_mm3, Mm.R4),
    (False, Mm.R4): (_mm5, Mm.ESTABLISHED),
}
