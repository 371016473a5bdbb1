"""IKE_SA_INIT (RFC 7296 1.2, 2.6, 2.23): SA, KE, nonces, NAT detection, COOKIE, INVALID_KE_PAYLOAD.

Initiator steps: build the request (a COOKIE first when the responder asked for one) and
handle the answer: keys and then IKE_AUTH; or retry with the cookie (2.6); or retry with the
group the responder named in INVALID_KE_PAYLOAD (1.2); or fail.
Responder step: one function from the request to the response; it creates the half-open IKE
SA only when it answers with keys (a COOKIE or INVALID_KE_PAYLOAD answer keeps no state).
"""

from __future__ import annotations

import hmac as _hmac

from cgwd.ike.crypto import DiffieHellman, ke_length

from . import keys as K
from .codec import KePayload, NoncePayload, NotifyPayload, Payload, SaPayload, all_of, first, notifies
from .constants import Exchange, Notify
from .exchange import Context, Drop, InitiatorExchange, Received, error_notify, notify_name
from .proposals import IkeProposal, answer, chosen_ike, ike_offer, select_ike
from .sa import IkeSa, IkeSaState

NONCE_LEN = 32
MAX_RETRIES = 3  # COOKIE / INVALID_KE_PAYLOAD round trips before giving up
COOKIE_SECRET_LIFETIME = 120.0


def derive_keys(ctx: Context, sa: IkeSa, g_ir: bytes) -> None:
    """SKEYSEED and SK_* of a new IKE SA from IKE_SA_INIT (2.14)."""
    prop = sa.proposal
    assert prop is not None
    seed = K.skeyseed(prop.prf, sa.ni, sa.nr, g_ir)
    keys = K.derive_ike_keys(prop.prf, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r, prop.encryption, prop.integrity)
    sa.set_keys(prop, keys, ctx.rand_fn())


def _ordered(proposals: list[IkeProposal], group: int) -> list[IkeProposal]:
    """Our proposals, those of the KE payload's group first."""
    return [p for p in proposals if p.group == group] + [p for p in proposals if p.group != group]


class IkeSaInitInitiator(InitiatorExchange):
    exchange = Exchange.IKE_SA_INIT
    what = "IKE_SA_INIT"

    def __init__(self, ctx: Context, sa: IkeSa, group: int, cookie: bytes = b"", retries: int = 0) -> None:
        super().__init__(ctx, sa)
        self.group = group
        self.cookie = cookie
        self.retries = retries

    def request(self, now: float) -> list[Payload] | None:
        sa = self.sa
        if sa.state is not IkeSaState.INIT_SENT:
            return None
        if sa.dh is None or sa.dh.group != self.group:
            sa.dh = DiffieHellman(self.group)
        if not sa.ni:
            sa.ni = self.ctx.rand(NONCE_LEN)
        out: list[Payload] = []
        if self.cookie:
            out.append(NotifyPayload(Notify.COOKIE, data=self.cookie))
        offer = ike_offer(_ordered(self.ctx.config.ike_algs, self.group))
        out += [SaPayload(offer), KePayload(self.group, sa.dh.public), NoncePayload(sa.ni)]
        out += self.ctx.nat_notifies(sa.spi_i, bytes(8))
        return out

    def on_response(self, msg: Received, now: float) -> None:
        sa = self.sa
        ns = notifies(msg.payloads)
        cookie = ns.get(Notify.COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64 or self.retries >= MAX_RETRIES:
                self.ctx.ike_failed(sa, "IKE_SA_INIT: responder keeps asking for a COOKIE", now)
                return
            self.ctx.count("cookies_received")
            self._retry(IkeSaInitInitiator(self.ctx, sa, self.group, cookie.data, self.retries + 1))
            return
        ike = ns.get(Notify.INVALID_KE_PAYLOAD)
        if ike is not None:
            group = int.from_bytes(ike.data[:2], "big") if len(ike.data) >= 2 else 0
            groups = [p.group for p in self.ctx.config.ike_algs]
            if group not in groups or group == self.group or self.retries >= MAX_RETRIES:
                self.ctx.ike_failed(sa, f"IKE_SA_INIT: responder wants DH group {group}, which we do not offer", now)
                return
            self.ctx.count("invalid_ke_received")
            self.ctx.error(f"IKE_SA_INIT: responder asked for DH group {group}: retrying")
            self._retry(IkeSaInitInitiator(self.ctx, sa, group, self.cookie, self.retries + 1))
            return
        err = error_notify(msg.payloads)
        if err is not None:
            self.ctx.ike_failed(sa, f"IKE_SA_INIT: peer answered {notify_name(err.notify_type)}", now)
            return
        saps = all_of(msg.payloads, SaPayload)
        ke = first(msg.payloads, KePayload)
        nonce = first(msg.payloads, NoncePayload)
        if len(saps) != 1 or len(saps[0].proposals) != 1 or ke is None or nonce is None:
            raise Drop("bad_ike_sa_init", "response needs one SA with one proposal, KE and Nr")
        chosen = chosen_ike(saps[0].proposals[0])
        if chosen is None or chosen not in self.ctx.config.ike_algs:
            raise Drop("bad_ike_sa_init", "responder chose algorithms we did not offer")
        if chosen.group != self.group or ke.group != self.group:
            raise Drop("bad_ike_sa_init", "responder's group differs from our KE payload's")
        if msg.hdr.spi_r == bytes(8):
            raise Drop("bad_ike_sa_init", "zero responder SPI")
        assert sa.dh is not None
        g_ir = sa.dh.shared_secret(ke.data)
        sa.spi_r = msg.hdr.spi_r
        sa.nr = nonce.data
        sa.proposal = chosen
        sa.init_response = msg.raw
        derive_keys(self.ctx, sa, g_ir)
        sa.dh = None
        self.ctx.detect_nat(sa, sa.spi_r, msg.payloads, msg.remote, msg.local_port)
        from .ike_auth import IkeAuthInitiator

        self.ctx.queue(sa, IkeAuthInitiator(self.ctx, sa), front=True)

    def _retry(self, again: "IkeSaInitInitiator") -> None:
        self.sa.my_mid = 0
        self.ctx.queue(self.sa, again, front=True)

    def on_timeout(self, now: float) -> None:
        self.ctx.ike_failed(self.sa, "timeout: no answer to IKE_SA_INIT", now)


class CookieJar:
    """Stateless cookies (2.6): Cookie = version | HMAC-SHA256(secret, Ni | IPi | SPIi)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.version = 0
        self.secret = b""
        self.previous = b""
        self.made_at: float | None = None

    def _rotate(self, now: float) -> None:
        if self.made_at is None or now - self.made_at >= COOKIE_SECRET_LIFETIME:
            self.previous = self.secret
            self.secret = self.ctx.rand(32)
            self.version = (self.version + 1) & 0xFF
            self.made_at = now

    def _make(self, secret: bytes, version: int, ni: bytes, ip: str, spi_i: bytes) -> bytes:
        return bytes([version]) + K.prf("sha256", secret, ni, ip.encode(), spi_i)

    def cookie(self, ni: bytes, ip: str, spi_i: bytes, now: float) -> bytes:
        self._rotate(now)
        return self._make(self.secret, self.version, ni, ip, spi_i)

    def valid(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes, now: float) -> bool:
        self._rotate(now)
        if not cookie:
            return False
        if cookie[0] == self.version:
            want = self._make(self.secret, self.version, ni, ip, spi_i)
        elif cookie[0] == (self.version - 1) & 0xFF and self.previous:
            want = self._make(self.previous, cookie[0], ni, ip, spi_i)
        else:
            return False
        return _hmac.compare_digest(cookie, want)


def respond(ctx: Context, msg: Received, now: float, *, need_cookie: bool, jar: CookieJar
            ) -> tuple[list[Payload], IkeSa | None]:
    """The response to an IKE_SA_INIT request, and the new half-open IKE SA (None when the
    answer is a COOKIE, INVALID_KE_PAYLOAD or NO_PROPOSAL_CHOSEN notification). The engine
    adds the NAT detection notifications (they depend on where the request came from)."""
    hdr = msg.hdr
    if hdr.message_id != 0 or hdr.spi_r != bytes(8) or not hdr.from_initiator:
        raise Drop("bad_ike_sa_init", "request must have message ID 0, a zero responder SPI and the I flag")
    saps = all_of(msg.payloads, SaPayload)
    ke = first(msg.payloads, KePayload)
    nonce = first(msg.payloads, NoncePayload)
    if len(saps) != 1 or ke is None or nonce is None:
        raise Drop("bad_ike_sa_init", "request needs SA, KE and Ni")
    if need_cookie:
        cookie = notifies(msg.payloads).get(Notify.COOKIE)
        if cookie is None or not jar.valid(cookie.data, nonce.data, msg.remote[0], hdr.spi_i, now):
            ctx.count("cookies_sent")
            return [NotifyPayload(Notify.COOKIE, data=jar.cookie(nonce.data, msg.remote[0], hdr.spi_i, now))], None
        ctx.count("cookies_verified")
    sel = select_ike(saps[0].proposals, ctx.config.ike_algs, ke.group)
    if sel is None:
        ctx.error("IKE_SA_INIT: no acceptable proposal from peer")
        ctx.count("no_proposal_chosen_sent")
        return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], None
    prop, ours = sel
    if ke.group != ours.group:
        ctx.count("invalid_ke_sent")
        return [NotifyPayload(Notify.INVALID_KE_PAYLOAD, data=ours.group.to_bytes(2, "big"))], None
    if len(ke.data) != ke_length(ours.group):
        raise Drop("bad_ke_length", f"{len(ke.data)} bytes for group {ours.group}")
    sa = IkeSa(hdr.spi_i, ctx.new_ike_spi(), False, IkeSaState.INIT_DONE, now)
    sa.proposal = ours
    sa.ni = nonce.data
    sa.nr = ctx.rand(NONCE_LEN)
    dh = DiffieHellman(ours.group)
    g_ir = dh.shared_secret(ke.data)
    derive_keys(ctx, sa, g_ir)
    sa.init_request = msg.raw
    sa.peer_mid = 1
    sa.last_request = msg.raw
    out: list[Payload] = [
        SaPayload([answer(prop, ours.transforms(), b"")]),
        KePayload(ours.group, dh.public),
        NoncePayload(sa.nr),
    ]
    return out, sa
