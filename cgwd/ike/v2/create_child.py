"""CREATE_CHILD_SA for Child SAs (RFC 7296 1.3.1-1.3.3, 2.8, 2.25): a new Child SA, or the rekey
of one (REKEY_SA), with PFS (KE payloads) when the ESP proposal names a group.

Initiator steps: build the request when the window lets it go (obsolete when the pair it
rekeys was replaced meanwhile) and handle the answer: install the new pair (the engine
resolves a rekey collision by the nonce rule of 2.8.1 and deletes what is redundant), or
retry with the group named by INVALID_KE_PAYLOAD, or retry later after TEMPORARY_FAILURE, or
start over when the peer does not know the pair (CHILD_SA_NOT_FOUND).
Responder step: one function from the request to the response.
"""

from __future__ import annotations

from cgwd.ike.crypto import DiffieHellman, ke_length

from . import keys as K
from .codec import (
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsPayload,
    all_of,
    first,
    notifies,
)
from .constants import Exchange, Notify, PayloadType, Protocol
from .exchange import Context, Drop, InitiatorExchange, Received, error_notify, notify_name
from .proposals import EspProposal, answer, chosen_esp, esp_offer, select_esp
from .sa import ChildSa, ChildSaState, IkeSa

NONCE_LEN = 32
MAX_KE_RETRIES = 2


def _ordered(proposals: list[EspProposal], group: int | None) -> list[EspProposal]:
    return [p for p in proposals if p.group == group] + [p for p in proposals if p.group != group]


class CreateChildInitiator(InitiatorExchange):
    exchange = Exchange.CREATE_CHILD_SA

    def __init__(self, ctx: Context, sa: IkeSa, rekeys: ChildSa | None = None, group: int | None = None,
                 retries: int = 0) -> None:
        super().__init__(ctx, sa)
        self.rekeys = rekeys
        self.what = "CREATE_CHILD_SA (Child SA rekey)" if rekeys else "CREATE_CHILD_SA (new Child SA)"
        algs = ctx.config.esp_algs
        self.group = group if group is not None else algs[0].group
        self.retries = retries
        self.offered: list[EspProposal] = []
        self.spi_in = 0
        self.ni = b""
        self.dh: DiffieHellman | None = None
        # a new Child SA the peer made while this one (also new, not a rekey) was outstanding
        self.collision: ChildSa | None = None
        if rekeys is not None:
            rekeys.rekeying = self

    def obsolete(self) -> bool:
        if not self.sa.usable:
            return True
        if self.rekeys is not None:
            return self.rekeys.state is not ChildSaState.INSTALLED or self.rekeys.rekeying is not self
        return any(c.state is ChildSaState.INSTALLED for c in self.ctx.children())

    def request(self, now: float) -> list[Payload] | None:
        if self.obsolete():
            self.release()
            return None
        self.offered = _ordered(self.ctx.config.esp_algs, self.group)
        self.spi_in = self.ctx.new_child_spi()
        self.ni = self.ctx.rand(NONCE_LEN)
        out: list[Payload] = []
        if self.rekeys is not None:
            out.append(NotifyPayload(Notify.REKEY_SA, Protocol.ESP, self.rekeys.spi_in.to_bytes(4, "big")))
        out += [SaPayload(esp_offer(self.offered, self.spi_in.to_bytes(4, "big"), with_dh=True)), NoncePayload(self.ni)]
        if self.group:
            self.dh = DiffieHellman(self.group)
            out.append(KePayload(self.group, self.dh.public))
        tsi, tsr = self.ctx.ts_offer()
        out += [TsPayload(tsi, PayloadType.TSI), TsPayload(tsr, PayloadType.TSR)]
        return out

    def release(self) -> None:
        if self.rekeys is not None and self.rekeys.rekeying is self:
            self.rekeys.rekeying = None

    def on_response(self, msg: Received, now: float) -> None:
        err = error_notify(msg.payloads)
        if err is not None:
            self._error(err, now)
            return
        saps = all_of(msg.payloads, SaPayload)
        nonce = first(msg.payloads, NoncePayload)
        tsi = first(msg.payloads, TsPayload, type=PayloadType.TSI)
        tsr = first(msg.payloads, TsPayload, type=PayloadType.TSR)
        if len(saps) != 1 or len(saps[0].proposals) != 1 or nonce is None or tsi is None or tsr is None:
            self._fail("response needs one SA with one proposal, Nr, TSi and TSr", now)
            return
        prop = saps[0].proposals[0]
        chosen = chosen_esp(prop)
        if chosen is None or chosen not in self.offered:
            self._fail("responder chose ESP algorithms we did not offer", now)
            return
        g_ir = b""
        if chosen.group:
            ke = first(msg.payloads, KePayload)
            if ke is None or self.dh is None or ke.group != self.dh.group or chosen.group != self.dh.group:
                self._fail("responder chose PFS without a matching KE payload", now)
                return
            g_ir = self.dh.shared_secret(ke.data)
        self.dh = None
        nets = self.ctx.narrow(tsi.selectors, tsr.selectors, True)
        if nets is None:
            self._fail("responder's traffic selectors are not within ours", now)
            return
        sa = self.sa
        keys = K.child_keys(sa.proposal.prf, sa.keys.sk_d, self.ni, nonce.data, chosen.encryption, chosen.integrity,
                            g_ir)
        rekeys = self.rekeys if self.rekeys is not None and self.rekeys.state is not ChildSaState.GONE else None
        self.release()
        child = self.ctx.install_child(sa, chosen, self.spi_in, int.from_bytes(prop.spi, "big"), keys, nets, True,
                                       (self.ni, nonce.data), rekeys, now)
        if self.rekeys is None and self.collision is not None:
            self.ctx.resolve_duplicate(child, self.collision, now)

    def _error(self, err: NotifyPayload, now: float) -> None:
        name = notify_name(err.notify_type)
        if err.notify_type == Notify.INVALID_KE_PAYLOAD:
            group = int.from_bytes(err.data[:2], "big") if len(err.data) >= 2 else 0
            groups = [p.group for p in self.ctx.config.esp_algs]
            if group in groups and group != self.group and self.retries < MAX_KE_RETRIES:
                self.ctx.count("invalid_ke_received")
                self.release()
                again = CreateChildInitiator(self.ctx, self.sa, self.rekeys, group, self.retries + 1)
                self.ctx.queue(self.sa, again, front=True)
                return
            self._fail(f"peer wants PFS group {group}, which we do not offer", now)
        elif err.notify_type == Notify.TEMPORARY_FAILURE:
            self.ctx.count("temporary_failures")
            self.release()
            if self.rekeys is not None:
                self.ctx.rekey_abandoned(self.rekeys, now)
                if self.rekeys.state is not ChildSaState.INSTALLED:
                    return  # a rekey of the peer's replaced it meanwhile
            self.ctx.defer(self.sa, CreateChildInitiator(self.ctx, self.sa, self.rekeys, self.group), now)
        elif err.notify_type == Notify.CHILD_SA_NOT_FOUND and self.rekeys is not None:
            self.release()
            self.ctx.rekey_abandoned(self.rekeys, now)
            if self.rekeys.state is ChildSaState.INSTALLED:
                self.ctx.remove_child(self.rekeys, "unknown to the peer", now)
                self.ctx.child_failed("the peer does not know the Child SA we rekeyed", now)
        else:
            self._fail(f"peer answered {name}", now)

    def _fail(self, why: str, now: float) -> None:
        self.release()
        self.ctx.child_failed(f"{self.what}: {why}", now, self.rekeys)

    def on_timeout(self, now: float) -> None:
        self.release()
        if self.rekeys is not None:
            self.ctx.rekey_abandoned(self.rekeys, now)
        super().on_timeout(now)


def respond(ctx: Context, sa: IkeSa, msg: Received, now: float) -> list[Payload]:
    """The response to a CREATE_CHILD_SA request for a Child SA (new or rekey)."""
    ns = notifies(msg.payloads)
    rekeys: ChildSa | None = None
    rk = ns.get(Notify.REKEY_SA)
    if rk is not None:
        if rk.protocol != Protocol.ESP or len(rk.spi) != 4:
            return [NotifyPayload(Notify.INVALID_SYNTAX)]
        rekeys = ctx.child_by_spi_out(int.from_bytes(rk.spi, "big"))
        if rekeys is None:
            ctx.count("rekey_unknown_child")
            return [NotifyPayload(Notify.CHILD_SA_NOT_FOUND, Protocol.ESP, rk.spi)]
        if rekeys.state is not ChildSaState.INSTALLED:
            ctx.count("rekey_of_replaced_child")
            return [NotifyPayload(Notify.TEMPORARY_FAILURE)]
    saps = all_of(msg.payloads, SaPayload)
    nonce = first(msg.payloads, NoncePayload)
    ke = first(msg.payloads, KePayload)
    tsi = first(msg.payloads, TsPayload, type=PayloadType.TSI)
    tsr = first(msg.payloads, TsPayload, type=PayloadType.TSR)
    if len(saps) != 1 or nonce is None:
        raise Drop("bad_create_child_sa", "request needs SA and Ni")
    if tsi is None or tsr is None:
        return [NotifyPayload(Notify.TS_UNACCEPTABLE)]
    sel = select_esp(saps[0].proposals, ctx.config.esp_algs, with_dh=True, ke_group=ke.group if ke else None)
    if sel is None:
        ctx.error("CREATE_CHILD_SA: no acceptable ESP proposal from peer")
        return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)]
    prop, chosen = sel
    if chosen.group and (ke is None or ke.group != chosen.group):
        ctx.count("invalid_ke_sent")
        return [NotifyPayload(Notify.INVALID_KE_PAYLOAD, data=chosen.group.to_bytes(2, "big"))]
    nets = ctx.narrow(tsi.selectors, tsr.selectors, False)
    if nets is None:
        ctx.error("CREATE_CHILD_SA: the peer's traffic selectors do not overlap ours")
        return [NotifyPayload(Notify.TS_UNACCEPTABLE)]
    g_ir = b""
    out_ke: list[Payload] = []
    if chosen.group:
        if len(ke.data) != ke_length(chosen.group):
            raise Drop("bad_ke_length", f"{len(ke.data)} bytes for group {chosen.group}")
        dh = DiffieHellman(chosen.group)
        g_ir = dh.shared_secret(ke.data)
        out_ke = [KePayload(chosen.group, dh.public)]
    nr = ctx.rand(NONCE_LEN)
    spi_in = ctx.new_child_spi()
    keys = K.child_keys(sa.proposal.prf, sa.keys.sk_d, nonce.data, nr, chosen.encryption, chosen.integrity, g_ir)
    ctx.install_child(sa, chosen, spi_in, int.from_bytes(prop.spi, "big"), keys, nets, False, (nonce.data, nr),
                      rekeys, now)
    local, remote = nets
    return [SaPayload([answer(prop, chosen.transforms(True), spi_in.to_bytes(4, "big"))]), NoncePayload(nr),
            *out_ke, TsPayload([TrafficSelector.from_network(remote)], PayloadType.TSI),
            TsPayload([TrafficSelector.from_network(local)], PayloadType.TSR)]
