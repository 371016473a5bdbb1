"""IKEv1 informational exchanges (RFC 2408 4.8, RFC 2409 5.7): DELETE, notifies, DPD.

Protected informationals (HASH(1), RFC 2409 5.7) of an established ISAKMP SA carry DELETEs
of IPsec and ISAKMP SAs, R-U-THERE / R-U-THERE-ACK (RFC 3706), INITIAL-CONTACT, CONNECTED
(the commit bit) and error notifies. A message ID is taken once in the SA's life (a replay is
a counted drop); a message counts as the peer's sign of life only once its content checked
out. Unprotected notifies are only recorded (no one may change state without the keys).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import constants as C
from . import keys
from . import quick_mode
from .codec import DeletePayload, Header, NotifyPayload
from .main_mode import IsakmpSa
from .messages import Drop, check_hash, decrypt, plain

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("cgwd.ike")


def receive(host: Host, sa: IsakmpSa, hdr: Header, data: bytes, remote: tuple[str, int], local_port: int,
            now: float) -> None:
    if not hdr.flags & C.FLAG_ENCRYPTION:
        payloads = plain(hdr, data)
        if sa.established or sa.keys is not None:
            raise Drop("unprotected_informational")
        notes = [C.NOTIFY_NAMES.get(p.notify_type, str(p.notify_type)) for p in payloads if isinstance(p, NotifyPayload)]
        host.error(f"unprotected notify during main mode: {', '.join(notes) or 'none'}")
        raise Drop("unprotected_informational")
    if sa.keys is None or not sa.p1_last_block:
        raise Drop("informational_before_phase1")
    mid = hdr.message_id
    host.check_mid(sa, mid, now)
    iv = keys.phase2_iv(sa.algs.hash, sa.p1_last_block, mid)
    payloads, _ = decrypt(sa, hdr, data, iv)
    rest = check_hash(sa, mid, payloads)
    sa.done_mids.add(mid)  # authenticated: its replay is a replay whatever it holds
    for p in rest:  # the content first: a malformed message is no sign of life
        if isinstance(p, NotifyPayload) and p.notify_type in (C.N_R_U_THERE, C.N_R_U_THERE_ACK) and len(p.data) != 4:
            raise Drop("bad_dpd")
    live = False
    for p in rest:
        if isinstance(p, DeletePayload):
            _delete(host, p, now)
            live = True
        elif isinstance(p, NotifyPayload):
            live = _notify(host, sa, p, now) or live
    if live:
        host.authenticated(sa, remote, local_port, now)


def _delete(host: Host, d: DeletePayload, now: float) -> None:
    if d.protocol == C.PROTO_ISAKMP:
        host.peer_deleted_isakmp(d.spis, now)
    elif d.protocol == C.PROTO_IPSEC_ESP:
        host.peer_deleted_esp([int.from_bytes(spi, "big") for spi in d.spis], now)
    else:
        host.count("delete_unknown_protocol")


def _notify(host: Host, sa: IsakmpSa, n: NotifyPayload, now: float) -> bool:
    """Act on one protected notify; whether it is a sign of the peer's life (an ACK of a probe
    we did not send, or no longer wait for, is not)."""
    t = n.notify_type
    if t == C.N_R_U_THERE:
        host.send_info(sa, [NotifyPayload(notify_type=C.N_R_U_THERE_ACK, protocol=C.PROTO_ISAKMP,
                                          spi=sa.cookies, data=n.data)])
        host.count("dpd_answered")
    elif t == C.N_R_U_THERE_ACK:
        seq = int.from_bytes(n.data, "big")
        if seq != host.liveness.seq:
            host.count("dpd_unexpected_ack")
            return False
        host.count("dpd_acked")
    elif t == C.N_INITIAL_CONTACT:
        host.initial_contact(sa)
    elif t == C.N_CONNECTED:
        if not quick_mode.connected(host, sa, n, now):
            host.count("connected_unexpected")
    elif t < 16384:
        name = C.NOTIFY_NAMES.get(t, str(t))
        host.error(f"peer sent {name}")
        host.count("notify_errors")
        for qm in list(sa.qm.values()):
            if qm.initiator and (not n.spi or n.spi == qm.spi_in.to_bytes(4, "big") or n.protocol == C.PROTO_ISAKMP):
                host.qm_failed(sa, qm, now, f"peer: {name}")
    else:
        host.count("notify_ignored")
    return True
