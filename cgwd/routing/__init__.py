"""The routing room: one VPN connection's routes, whoever offers them.

Modules
-------
rib.py      sans-IO RIB: routes per tunnel, best path across tunnels, ECMP, import policy and
            maximum prefix count for learned routes, routes that may not cover an outside
            address, graceful-restart stale handling, fail-closed guards, ``RibChanges``.
kernel.py   ``KernelRoutes(table=254, metric=100, proto=157)``: pyroute2 install / reconcile
            / ``flush_stale``, fail-closed ``unreachable`` routes at a worse metric; never
            touches routes of another protocol id or of another live instance.
table.py    ``RoutingSettings`` (every VPN-level setting) and ``RoutingTable``: route sources
            -> RIB -> kernel (netlink in a worker thread), ``start()``/``stop()``,
            ``reconfigure()`` in place, supervised maintenance.
source.py   ``RouteSource`` / ``OfferedRoute`` protocols: what BGP
            (:class:`cgwd.bgp.source.BgpRouteSource`) and static routing
            (:class:`cgwd.routing.static.StaticRouteSource`) implement.
static.py   static routing: a sans-IO per-tunnel core (liveness, hold-down, health check)
            and its asyncio route source.
icmp.py     the thin ICMP echo adapter of the static health check.
"""
