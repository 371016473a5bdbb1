"""The routing table with BGP's event glue, for code that drives a bare BgpSession.

The routing table itself is :class:`cgwd.routing.table.RoutingTable`; a tunnel's BGP feeds
it through :class:`cgwd.bgp.source.BgpRouteSource` (the daemon's ``BgpPart`` and the
standalone runner do). ``RoutingTable.event_handler(tunnel, session, then)`` here gives the
``on_event`` of a :class:`~cgwd.bgp.speaker.BgpSpeaker` made by hand (benchmarks, tests).
"""
from __future__ import annotations

from ..routing.table import RoutingSettings  # noqa: F401
from ..routing.table import RoutingTable as _RoutingTable
from .session import BgpSession
from .source import SessionLimit, apply_event


class RoutingTable(_RoutingTable):
    def handle_event(self, tunnel_name: str, ev) -> None:
        apply_event(self, tunnel_name, ev)

    def event_handler(self, tunnel_name: str, session: BgpSession | None = None, then=None):
        """An ``on_event`` for BgpSpeaker; ``then(ev)`` is called afterwards."""
        if session is not None:
            self.limit_handlers[tunnel_name] = SessionLimit(session, self.clock)
        self.rib.add_tunnel(tunnel_name)

        def on_event(ev):
            apply_event(self, tunnel_name, ev)
            if then is not None:
                then(ev)
        return on_event
