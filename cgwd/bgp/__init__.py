"""BGP-4 for cgwd: one eBGP session per tunnel over the inside /30 (AWS .1, us .2), or, for
an IPv6 VPN connection (a Transit Gateway's), over the inside /126 carrying IPv6 unicast only
(``BgpPeerConfig(ipv4=False, ipv6=True)``: RFC 4760 MP_REACH/MP_UNREACH, RFC 2545 next hops,
``derive_router_id`` for a gateway with IPv6 outside addresses only).

Modules
-------
message.py   codec (RFC 4271, 4760 MP, 6793 4-octet AS, 2918 route refresh, 4724 GR,
             1997 communities, 7606 revised error handling); ``Route`` value type.
session.py   sans-IO session core ``BgpSession(BgpPeerConfig)``: RFC 4271 FSM with up to
             two TCP connections (collision detection 6.8), timers, Adj-RIB-Out.
speaker.py   ``BgpSpeaker``: asyncio adapter (active connect bound to the inside address,
             passive listener on inside:179, timers via call_at, input in bounded slices).
rib.py       sans-IO RIB: Adj-RIB-In per tunnel, best path across tunnels, ECMP,
             max-prefix, graceful-restart stale handling, ``RibChanges`` for the kernel.
policy.py    ``ImportPolicy`` (RFC 8212 default deny; "aws-default"), ``ExportPolicy``,
             ``check_export_limit(prefixes, limit=100)``.
kernel.py    ``KernelRoutes(table=254, metric=100, proto=157)``: pyroute2 install /
             reconcile / ``flush_stale``; never touches routes of another protocol id.
routing.py   ``RoutingTable``: sessions -> RIB -> kernel (netlink in a worker thread).
standalone.py  BGP-only runner (JSON config) used by the interop tests.

Daemon wiring (per VPN connection, N tunnels)
---------------------------------------------
::

    rt = RoutingTable(kernel=KernelRoutes(table, metric, proto), ecmp=False,
                      import_policy="aws-default" | ImportPolicy(...) | None (deny),
                      max_prefix=1000, max_prefix_action="warn"|"drop"|"reset",
                      own_prefixes=[...advertised...])
    rt.startup_cleanup()                       # routes a crashed run left (proto id)
    sess = BgpSession(BgpPeerConfig(local_address, remote_address, local_asn, remote_asn,
                                    router_id, hold_time=30, connect_retry=5, ...))
    sess.announce(ExportPolicy(prefixes, prepend=n, med=m).routes(local_asn))
    sp = BgpSpeaker(sess, local_address=..., remote_address=...,
                    on_event=rt.event_handler(tunnel_name, sess, then=daemon_hook))
    rt.tunnel_up(tunnel_name, ifname, gateway, index)    # when IPsec + interface are up
    await sp.start() ... await sp.stop(reason)
    rt.tunnel_down(tunnel_name)                # routes via the tunnel leave at once
    asyncio.ensure_future(rt.maintain(30))     # stale expiry + kernel reconciliation
    rt.routes() -> [dict(prefix, tunnel, nexthop, as_path, med, best, stale, installed)]
    rt.clear(); rt.close()                     # shutdown: remove our routes, stop worker

Events from ``BgpSession.next_event()`` (delivered to ``on_event`` by the speaker):
``SessionUp(peer_hold, capabilities, hold_time, keepalive, peer_asn, peer_id)``,
``SessionDown(reason, notification=(code, subcode, data)|None, sent, graceful_restart,
restart_time)``, ``RoutesReceived(announced: list[Route], withdrawn: list[str])``
(coalesced per input slice, final state per prefix), ``EndOfRib(afi, safi)``.

Times given to the sans-IO cores are the event loop's monotonic clock; ``status()
['uptime_since']`` is in that clock.  KernelRoutes must not be driven from the event-loop
thread on the hot path (pyroute2 0.9's sync API runs its own loop; calls made from a loop
thread are moved to a helper thread and block): RoutingTable uses its worker thread.

Kernel protocol id 157 ("cgwd"): unused in iproute2's rt_protos (bgp is 186, bird 12) and
outside FRR's 186-198;
``ip route show proto 157`` lists exactly what cgwd installed.
"""
