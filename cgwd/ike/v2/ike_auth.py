"""IKE_AUTH (RFC 7296 1.2, 2.15, 2.21.2): PSK authentication, identities, INITIAL_CONTACT and
the first Child SA (its selectors narrowed to the configuration, 0.0.0.0/0 for AWS).

The AUTH payload is prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>) with SignedOctets =
the sender's IKE_SA_INIT message | the other side's nonce | prf(SK_p, the sender's ID body).
A Child SA that cannot be agreed (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, ...) leaves the IKE SA
up (2.21.2): the engine tries CREATE_CHILD_SA later.
"""

from __future__ import annotations

import hmac as _hmac

from . import keys as K
from .codec import (
    AuthPayload,
    IdPayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsPayload,
    all_of,
    first,
    notifies,
)
from .constants import AuthMethod, Exchange, Notify, PayloadType
from .exchange import Context, Drop, InitiatorExchange, Received, error_notify, notify_name
from .proposals import EspProposal, answer, chosen_esp, esp_offer, select_esp
from .sa import IkeSa, IkeSaState

# Errors about the Child SA only: the IKE SA is still established (2.21.2).
CHILD_ERRORS = frozenset({
    Notify.NO_PROPOSAL_CHOSEN, Notify.TS_UNACCEPTABLE, Notify.SINGLE_PAIR_REQUIRED, Notify.INTERNAL_ADDRESS_FAILURE,
    Notify.FAILED_CP_REQUIRED, Notify.INVALID_SELECTORS, Notify.NO_ADDITIONAL_SAS,
})


def _auth(ctx: Context, sa: IkeSa, for_initiator: bool, id_body: bytes) -> bytes:
    assert sa.proposal is not None and sa.keys is not None
    prf = sa.proposal.prf
    if for_initiator:
        octets = K.signed_octets(prf, sa.init_request, sa.nr, sa.keys.sk_pi, id_body)
    else:
        octets = K.signed_octets(prf, sa.init_response, sa.ni, sa.keys.sk_pr, id_body)
    return K.psk_auth(prf, ctx.psk(), octets)


def configured(ctx: Context, chosen: EspProposal) -> EspProposal | None:
    """Our configured ESP proposal for a choice made without DH (its group is for rekeys)."""
    for p in ctx.config.esp_algs:
        if p.without_group() == chosen.without_group():
            return p
    return None


class IkeAuthInitiator(InitiatorExchange):
    exchange = Exchange.IKE_AUTH
    what = "IKE_AUTH"

    def __init__(self, ctx: Context, sa: IkeSa) -> None:
        super().__init__(ctx, sa)
        self.spi_in = 0
        self.initial_contact = False

    def request(self, now: float) -> list[Payload] | None:
        sa = self.sa
        if sa.state is not IkeSaState.INIT_SENT:
            return None
        sa.go(IkeSaState.AUTH_SENT)
        idi = self.ctx.my_id()
        idi.type = PayloadType.IDI
        out: list[Payload] = [idi, AuthPayload(AuthMethod.SHARED_KEY_MIC, _auth(self.ctx, sa, True, idi.encode_body()))]
        self.initial_contact = self.ctx.initial_contact_due()
        if self.initial_contact:
            out.append(NotifyPayload(Notify.INITIAL_CONTACT))
        self.spi_in = self.ctx.new_child_spi()
        tsi, tsr = self.ctx.ts_offer()
        out += [SaPayload(esp_offer(self.ctx.config.esp_algs, self.spi_in.to_bytes(4, "big"), with_dh=False)),
                TsPayload(tsi, PayloadType.TSI), TsPayload(tsr, PayloadType.TSR)]
        return out

    def on_response(self, msg: Received, now: float) -> None:
        sa = self.sa
        err = error_notify(msg.payloads)
        idr = first(msg.payloads, IdPayload, type=PayloadType.IDR)
        auth = first(msg.payloads, AuthPayload)
        if err is not None and (err.notify_type not in CHILD_ERRORS or auth is None):
            if err.notify_type == Notify.AUTHENTICATION_FAILED:
                self.ctx.count("auth_failures")
                reason = "IKE_AUTH: peer refused our authentication (pre-shared key or identity mismatch?)"
            else:
                reason = f"IKE_AUTH: peer answered {notify_name(err.notify_type)}"
            self.ctx.ike_failed(sa, reason, now)
            return
        if idr is None or auth is None:
            self.ctx.ike_failed(sa, "IKE_AUTH: response without IDr or AUTH", now)
            return
        if auth.method != AuthMethod.SHARED_KEY_MIC or not _hmac.compare_digest(
                auth.data, _auth(self.ctx, sa, False, idr.encode_body())):
            self.ctx.count("auth_failures")
            self.ctx.ike_failed(sa, "IKE_AUTH: the responder's AUTH does not verify (pre-shared key mismatch?)", now)
            return
        try:
            self.ctx.check_peer_id(idr)
        except Drop as d:
            self.ctx.ike_failed(sa, d.detail, now)
            return
        if self.initial_contact:
            self.ctx.initial_contact_sent()
        self.ctx.ike_established(sa, now)
        if err is not None:
            self.ctx.child_failed(f"IKE_AUTH: no Child SA: peer answered {notify_name(err.notify_type)}", now)
            return
        self._child(msg, now)

    def _child(self, msg: Received, now: float) -> None:
        sa = self.sa
        saps = all_of(msg.payloads, SaPayload)
        tsi = first(msg.payloads, TsPayload, type=PayloadType.TSI)
        tsr = first(msg.payloads, TsPayload, type=PayloadType.TSR)
        if len(saps) != 1 or len(saps[0].proposals) != 1 or tsi is None or tsr is None:
            self.ctx.child_failed("IKE_AUTH: response without a Child SA", now)
            return
        prop = saps[0].proposals[0]
        chosen = chosen_esp(prop)
        ours = configured(self.ctx, chosen) if chosen is not None and chosen.group is None else None
        if ours is None:
            self.ctx.child_failed("IKE_AUTH: responder chose ESP algorithms we did not offer", now)
            return
        nets = self.ctx.narrow(tsi.selectors, tsr.selectors, True)
        if nets is None:
            self.ctx.child_failed("IKE_AUTH: responder's traffic selectors are not within ours", now)
            return
        keys = K.child_keys(sa.proposal.prf, sa.keys.sk_d, sa.ni, sa.nr, chosen.encryption, chosen.integrity)
        self.ctx.install_child(sa, chosen, self.spi_in, int.from_bytes(prop.spi, "big"), keys, nets, True,
                               (sa.ni, sa.nr), None, now)

    def on_timeout(self, now: float) -> None:
        self.ctx.ike_failed(self.sa, "timeout: no answer to IKE_AUTH", now)


def respond(ctx: Context, sa: IkeSa, msg: Received, now: float) -> tuple[list[Payload], bool]:
    """The response to IKE_AUTH, and whether the IKE SA is now established (False: the
    response is AUTHENTICATION_FAILED and the engine forgets the SA once it is sent)."""
    if sa.state is not IkeSaState.INIT_DONE:
        raise Drop("unexpected_ike_auth")
    idi = first(msg.payloads, IdPayload, type=PayloadType.IDI)
    idr_wanted = first(msg.payloads, IdPayload, type=PayloadType.IDR)
    auth = first(msg.payloads, AuthPayload)
    fail = [NotifyPayload(Notify.AUTHENTICATION_FAILED)]
    if idi is None or auth is None:
        ctx.error("IKE_AUTH: request without IDi or AUTH (EAP is not supported)")
        return fail, False
    if auth.method != AuthMethod.SHARED_KEY_MIC or not _hmac.compare_digest(
            auth.data, _auth(ctx, sa, True, idi.encode_body())):
        ctx.count("auth_failures")
        ctx.error("IKE_AUTH: the initiator's AUTH does not verify (pre-shared key mismatch?)")
        return fail, False
    me = ctx.my_id()
    if idr_wanted is not None and (idr_wanted.id_type, idr_wanted.data) != (me.id_type, me.data):
        ctx.error("IKE_AUTH: the initiator asks for another identity than ours")
        return fail, False
    try:
        ctx.check_peer_id(idi)
    except Drop:
        return fail, False
    ctx.adopt_path(msg.remote, msg.local_port)
    if Notify.INITIAL_CONTACT in notifies(msg.payloads):
        ctx.initial_contact_received(sa, now)
    ctx.ike_established(sa, now)
    me.type = PayloadType.IDR
    out: list[Payload] = [me, AuthPayload(AuthMethod.SHARED_KEY_MIC, _auth(ctx, sa, False, me.encode_body()))]
    out += _child_response(ctx, sa, msg, now)
    return out, True


def _child_response(ctx: Context, sa: IkeSa, msg: Received, now: float) -> list[Payload]:
    saps = all_of(msg.payloads, SaPayload)
    tsi = first(msg.payloads, TsPayload, type=PayloadType.TSI)
    tsr = first(msg.payloads, TsPayload, type=PayloadType.TSR)
    if not saps and tsi is None and tsr is None:
        return []  # childless IKE SA (RFC 6023)
    if len(saps) != 1:
        return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)]
    if tsi is None or tsr is None:
        return [NotifyPayload(Notify.TS_UNACCEPTABLE)]
    sel = select_esp(saps[0].proposals, ctx.config.esp_algs, with_dh=False)
    if sel is None:
        ctx.error("IKE_AUTH: no acceptable ESP proposal from peer")
        return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)]
    prop, chosen = sel
    nets = ctx.narrow(tsi.selectors, tsr.selectors, False)
    if nets is None:
        ctx.error("IKE_AUTH: the peer's traffic selectors do not overlap ours")
        return [NotifyPayload(Notify.TS_UNACCEPTABLE)]
    spi_in = ctx.new_child_spi()
    keys = K.child_keys(sa.proposal.prf, sa.keys.sk_d, sa.ni, sa.nr, chosen.encryption, chosen.integrity)
    ctx.install_child(sa, chosen, spi_in, int.from_bytes(prop.spi, "big"), keys, nets, False,
                      (sa.ni, sa.nr), None, now)
    local, remote = nets
    return [SaPayload([answer(prop, chosen.transforms(False), spi_in.to_bytes(4, "big"))]),
            TsPayload([TrafficSelector.from_network(remote)], PayloadType.TSI),
            TsPayload([TrafficSelector.from_network(local)], PayloadType.TSR)]
