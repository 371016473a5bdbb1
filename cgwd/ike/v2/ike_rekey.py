"""CREATE_CHILD_SA for the IKE SA (RFC 7296 1.3.2, 2.18, 2.8.2): rekeying without
reauthentication. The new IKE SA's SKEYSEED is prf(SK_d (old), g^ir (new) | Ni | Nr) with the
old SA's PRF; its keys come from prf+ of the new PRF over Ni | Nr | SPIi | SPIr; its message
IDs start at 0; the Child SAs move to it; the initiator of the surviving rekey deletes the old
IKE SA. Simultaneous rekeys: the new SA with the lowest of the four nonces is redundant and
is deleted by the side that created it (the engine decides, :meth:`Context.ike_rekeyed`).
"""

from __future__ import annotations

from cgwd.ike.crypto import DiffieHellman, ke_length

from . import keys as K
from .codec import KePayload, NoncePayload, NotifyPayload, Payload, SaPayload, all_of, first
from .constants import Exchange, Notify, Protocol
from .create_child import CreateChildInitiator
from .exchange import Context, InitiatorExchange, Received, Step, error_notify, notify_name
from .ike_sa_init import NONCE_LEN
from .proposals import IkeProposal, answer, chosen_ike, ike_offer, select_ike
from .sa import IkeSa, IkeSaState


def _new_sa(ctx: Context, old: IkeSa, prop: IkeProposal, spi_i: bytes, spi_r: bytes, we_initiate: bool,
            ni: bytes, nr: bytes, g_ir: bytes, now: float) -> IkeSa:
    assert old.proposal is not None and old.keys is not None
    new = IkeSa(spi_i, spi_r, we_initiate, IkeSaState.ESTABLISHED, now)
    new.ni, new.nr = ni, nr
    seed = K.rekey_skeyseed(old.proposal.prf, old.keys.sk_d, g_ir, ni, nr)
    keys = K.derive_ike_keys(prop.prf, seed, ni, nr, spi_i, spi_r, prop.encryption, prop.integrity)
    new.set_keys(prop, keys, ctx.rand_fn())
    return new


class IkeRekeyInitiator(InitiatorExchange):
    exchange = Exchange.CREATE_CHILD_SA
    what = "CREATE_CHILD_SA (IKE SA rekey)"

    def __init__(self, ctx: Context, sa: IkeSa, group: int | None = None, retries: int = 0) -> None:
        super().__init__(ctx, sa)
        self.group = group or (sa.proposal.group if sa.proposal else ctx.config.ike_algs[0].group)
        self.retries = retries
        self.spi = b""
        self.ni = b""
        self.dh: DiffieHellman | None = None

    def request(self, now: float) -> list[Payload] | None:
        if not self.sa.established or self.sa.rekeying is not self:
            if self.sa.rekeying is self:
                self.sa.rekeying = None
            return None
        self.spi = self.ctx.new_ike_spi()
        self.ni = self.ctx.rand(NONCE_LEN)
        self.dh = DiffieHellman(self.group)
        algs = self.ctx.config.ike_algs
        offer = [p for p in algs if p.group == self.group] + [p for p in algs if p.group != self.group]
        return [SaPayload(ike_offer(offer, self.spi)), NoncePayload(self.ni), KePayload(self.group, self.dh.public)]

    def on_response(self, msg: Received, now: float) -> None:
        sa = self.sa
        if sa.rekeying is self:
            sa.rekeying = None
        err = error_notify(msg.payloads)
        if err is not None:
            if err.notify_type == Notify.INVALID_KE_PAYLOAD and self.retries < 2:
                group = int.from_bytes(err.data[:2], "big") if len(err.data) >= 2 else 0
                if group in [p.group for p in self.ctx.config.ike_algs] and group != self.group:
                    again = IkeRekeyInitiator(self.ctx, sa, group, self.retries + 1)
                    sa.rekeying = again
                    self.ctx.queue(sa, again, front=True)
                    return
            if err.notify_type == Notify.TEMPORARY_FAILURE:
                self.ctx.count("temporary_failures")
                again = IkeRekeyInitiator(self.ctx, sa, self.group)
                sa.rekeying = again
                self.ctx.defer(sa, again, now)
                return
            self.ctx.ike_rekey_failed(sa, f"IKE SA rekey: peer answered {notify_name(err.notify_type)}", now)
            return
        saps = all_of(msg.payloads, SaPayload)
        nonce = first(msg.payloads, NoncePayload)
        ke = first(msg.payloads, KePayload)
        if len(saps) != 1 or len(saps[0].proposals) != 1 or nonce is None or ke is None:
            self.ctx.ike_rekey_failed(sa, "IKE SA rekey: response needs SA, Nr and KEr", now)
            return
        prop = saps[0].proposals[0]
        chosen = chosen_ike(prop)
        if (chosen is None or chosen not in self.ctx.config.ike_algs or len(prop.spi) != 8 or prop.spi == bytes(8)
                or chosen.group != self.group or ke.group != self.group):
            self.ctx.ike_rekey_failed(sa, "IKE SA rekey: responder chose what we did not offer", now)
            return
        assert self.dh is not None
        g_ir = self.dh.shared_secret(ke.data)
        self.dh = None
        new = _new_sa(self.ctx, sa, chosen, self.spi, prop.spi, True, self.ni, nonce.data, g_ir, now)
        self.ctx.ike_rekeyed(sa, new, True, now)

    def on_timeout(self, now: float) -> None:
        if self.sa.rekeying is self:
            self.sa.rekeying = None
        super().on_timeout(now)


def busy_with_children(sa: IkeSa) -> bool:
    """Our CREATE_CHILD_SA for a Child SA is outstanding on ``sa`` (2.25: answer an IKE SA rekey
    with TEMPORARY_FAILURE meanwhile)."""
    r = sa.outstanding
    return r is not None and isinstance(r.exchange, CreateChildInitiator) and r.exchange.step is Step.SENT


def respond(ctx: Context, sa: IkeSa, msg: Received, now: float) -> list[Payload]:
    """The response to a CREATE_CHILD_SA request rekeying the IKE SA ``sa``."""
    saps = all_of(msg.payloads, SaPayload)
    nonce = first(msg.payloads, NoncePayload)
    ke = first(msg.payloads, KePayload)
    if not sa.established or busy_with_children(sa):
        ctx.count("temporary_failures_sent")
        return [NotifyPayload(Notify.TEMPORARY_FAILURE)]
    if len(saps) != 1 or nonce is None or ke is None:
        return [NotifyPayload(Notify.INVALID_SYNTAX)]
    offered = [p for p in saps[0].proposals if p.protocol == Protocol.IKE and len(p.spi) == 8 and p.spi != bytes(8)]
    sel = select_ike(offered, ctx.config.ike_algs, ke.group)
    if sel is None:
        ctx.error("IKE SA rekey: no acceptable proposal from peer")
        return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)]
    prop, ours = sel
    if ke.group != ours.group:
        ctx.count("invalid_ke_sent")
        return [NotifyPayload(Notify.INVALID_KE_PAYLOAD, data=ours.group.to_bytes(2, "big"))]
    if len(ke.data) != ke_length(ours.group):
        return [NotifyPayload(Notify.INVALID_SYNTAX)]
    dh = DiffieHellman(ours.group)
    g_ir = dh.shared_secret(ke.data)
    nr = ctx.rand(NONCE_LEN)
    spi = ctx.new_ike_spi()
    new = _new_sa(ctx, sa, ours, prop.spi, spi, False, nonce.data, nr, g_ir, now)
    ctx.ike_rekeyed(sa, new, False, now)
    return [SaPayload([answer(prop, ours.transforms(), spi)]), NoncePayload(nr), KePayload(ours.group, dh.public)]
