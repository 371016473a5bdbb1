"""The seam between the routing table and what offers it routes (BGP, static routing).

One route source per tunnel. The daemon starts it when the tunnel's SA pair is installed
(the tunnel interface exists and carries traffic) and stops it when the tunnel is lost; in
between the source offers routes to the VPN's :class:`~cgwd.routing.table.RoutingTable`
(BGP: what the peer announces, through :meth:`RoutingTable.routes_received`; static: the
configured prefixes, through :meth:`RoutingTable.offer`), each with a preference.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class LearnedPath(NamedTuple):
    """The path attributes a route was learned with, which cgwd passes on when it announces
    the prefix further (to a LAN router with ``as_path = "aws"``).

    ``as_path`` holds BGP's segments ``((segment_type, (asn, ...)), ...)`` as the peer sent
    them; ``()`` for a route nobody announced (a static route): announcing it further makes
    cgwd its originator. ``origin`` is BGP's ORIGIN (0 IGP, 1 EGP, 2 INCOMPLETE); the last two
    are what an aggregating speaker upstream set (RFC 4271 5.1.6-5.1.7): kept, not made up.
    (A NamedTuple: immutable, compared by value, and cheap to make once per carried prefix.)
    """

    as_path: tuple = ()
    origin: int = 0
    atomic_aggregate: bool = False
    aggregator: tuple | None = None


ORIGINATED = LearnedPath()      # no learned path: whoever announces it further originates it


@runtime_checkable
class OfferedRoute(Protocol):
    """A route as the RIB sees it, whoever offered it."""

    @property
    def prefix(self) -> str: ...

    def learned_path(self) -> LearnedPath:
        """The path it was learned with (``ORIGINATED``: none, e.g. a static route)."""

    def preference(self) -> tuple:
        """Lower is better; equal preferences share the traffic with ECMP."""

    def describe(self) -> dict:
        """Source-specific fields for status (``source``: "bgp" or "static", ...)."""


@runtime_checkable
class RouteSource(Protocol):
    """One tunnel's source of routes."""

    kind: str        # "bgp" or "static"
    tunnel: str      # the tunnel's name (the RIB's key)

    async def start(self) -> None:
        """The tunnel carries traffic (its SA pair is installed): begin offering routes."""

    async def stop(self, reason: str = "") -> None:
        """The tunnel is gone or shutting down: offer nothing (routes leave at once)."""

    def reconfigure(self, **settings) -> list[str]:
        """Apply new settings in place; returns the names of the settings that changed."""

    def status(self) -> dict:
        """For `cgwctl status`: ``kind``, ``state`` and what the source knows."""

    def offered(self) -> list[OfferedRoute]:
        """The routes this source offers now."""


class LimitHandler(Protocol):
    """What the routing table calls when a tunnel's learned routes exceed the maximum
    prefix count with action "reset" (BGP: Cease / Maximum Number of Prefixes Reached)."""

    def limit_exceeded(self, limit: int) -> None: ...
