"""INFORMATIONAL (RFC 7296 1.4, 1.5, 2.4): liveness checks, DELETE of Child SAs and IKE SAs.

Initiator kinds: a liveness check (an empty request: AWS's "DPD" on IKEv2), retransmitted
every ``dpd_interval`` ``dpd_retries`` times before the peer is declared dead; a DELETE of
Child SAs (the response carries the peer's halves, 1.4.1); a DELETE of an IKE SA.
Responder step: answer a liveness check; delete what the peer deletes and answer with the
paired SPIs (none for pairs we are deleting ourselves at the same time).
"""

from __future__ import annotations

import enum
from typing import Callable

from .codec import DeletePayload, NotifyPayload, Payload
from .constants import ERROR_NOTIFY_MAX, Exchange, Protocol
from .exchange import Context, InitiatorExchange, Received, notify_name
from .sa import ChildSa, ChildSaState, IkeSa, IkeSaState


class InfoKind(enum.Enum):
    LIVENESS = "liveness"
    DELETE_CHILD = "delete_child"
    DELETE_IKE = "delete_ike"


class InformationalInitiator(InitiatorExchange):
    exchange = Exchange.INFORMATIONAL

    def __init__(self, ctx: Context, sa: IkeSa, kind: InfoKind, children: list[ChildSa] | None = None) -> None:
        super().__init__(ctx, sa)
        self.kind = kind
        self.children = list(children or [])
        self.what = {InfoKind.LIVENESS: "liveness check", InfoKind.DELETE_CHILD: "Child SA delete",
                     InfoKind.DELETE_IKE: "IKE SA delete"}[kind]

    def retransmission(self) -> tuple[float, int]:
        if self.kind is InfoKind.LIVENESS:
            cfg = self.ctx.config
            return float(cfg.dpd_interval), max(0, int(cfg.dpd_retries) - 1)
        return super().retransmission()

    def request(self, now: float) -> list[Payload] | None:
        sa = self.sa
        if self.kind is InfoKind.DELETE_IKE:
            if sa.state is IkeSaState.GONE:
                return None
            if sa.state is not IkeSaState.DELETING:
                sa.go(IkeSaState.DELETING)
            return [DeletePayload(Protocol.IKE)]
        if not sa.usable:
            return None
        if self.kind is InfoKind.LIVENESS:
            self.ctx.count("liveness_sent")
            return []
        # pairs already gone here (expired, refused by the data path) are deleted at the peer too
        for c in self.children:
            if c.state in (ChildSaState.INSTALLED, ChildSaState.REKEYED):
                c.go(ChildSaState.DELETING)
        return [DeletePayload(Protocol.ESP, [c.spi_in.to_bytes(4, "big") for c in self.children])]

    def on_response(self, msg: Received, now: float) -> None:
        if self.kind is InfoKind.LIVENESS:
            self.ctx.liveness_answered(now)
        elif self.kind is InfoKind.DELETE_CHILD:
            for c in self.children:
                self.ctx.child_deleted(c, "deleted", now)
        else:
            self.ctx.remove_ike_sa(self.sa, "deleted", now)

    def on_timeout(self, now: float) -> None:
        if self.kind is InfoKind.DELETE_IKE:
            self.ctx.remove_ike_sa(self.sa, "deleted (no answer)", now)
            return
        super().on_timeout(now)


def respond(ctx: Context, sa: IkeSa, msg: Received, now: float) -> tuple[list[Payload], Callable[[], None] | None]:
    """The response to an INFORMATIONAL request and what to do once it is sent."""
    out: list[Payload] = []
    after: Callable[[], None] | None = None
    if not msg.payloads:
        ctx.count("liveness_answered")
        return out, None
    ours: list[bytes] = []
    for p in msg.payloads:
        if isinstance(p, DeletePayload):
            if p.protocol == Protocol.IKE:
                ctx.count("ike_deletes_received")
                after = lambda: ctx.remove_ike_sa(sa, "deleted by peer", now)  # noqa: E731
            elif p.protocol == Protocol.ESP:
                for spi in p.spis:
                    child = ctx.child_by_spi_out(int.from_bytes(spi, "big"))
                    if child is None:
                        ctx.count("delete_unknown_spi")
                        continue
                    if child.state is not ChildSaState.DELETING:
                        ours.append(child.spi_in.to_bytes(4, "big"))
                    ctx.child_deleted(child, "deleted by peer", now)
            else:
                ctx.count("delete_unknown_protocol")
        elif isinstance(p, NotifyPayload):
            if p.notify_type <= ERROR_NOTIFY_MAX:
                ctx.count("notify_errors")
                ctx.error(f"peer sent {notify_name(p.notify_type)}")
            else:
                ctx.count("notify_ignored")
    if ours:
        out.append(DeletePayload(Protocol.ESP, ours))
    return out, after
