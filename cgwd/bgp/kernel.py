"""Install BGP-selected routes in the Linux kernel with pyroute2.

Routes go out through the tunnel interface (oif) with the AWS inside address (.1) as
gateway, in a configurable table (default main, 254), metric (default 100) and with our
own routing protocol id **196** ("cgwd"; not in iproute2's rt_protos, which reserves
186-192 for bgp/isis/ospf/rip/eigrp; 196 is what `ip route show proto 196` lists).

Safety: every delete is qualified with our protocol id, and the kernel refuses to delete
a route whose protocol differs (fib_table_delete matches rtm_protocol); we never use
NLM_F_REPLACE: a change is "delete ours, then add exclusively", so a route another daemon
installed with the same prefix/metric is left alone (counted in ``conflicts``).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
import threading

log = logging.getLogger("cgwd.bgp.kernel")

RTPROT_CGWD = 196
DEFAULT_TABLE = 254
DEFAULT_METRIC = 100


def _off_loop(fn):
    """Run ``fn`` in a helper thread when called from a thread running an asyncio loop.

    pyroute2 0.9's synchronous IPRoute drives its own event loop and fails with "This
    event loop is already running" inside one.  The call still blocks the caller (use
    RoutingTable's worker thread for the hot path); this only keeps it correct.
    """
    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(self, *a, **kw)
        box = {}

        def run():
            try:
                box["r"] = fn(self, *a, **kw)
            except BaseException as e:   # re-raised in the caller
                box["e"] = e
        t = threading.Thread(target=run, name="cgwd-kernel-call")
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box.get("r")
    return wrapper


class KernelRoutes:
    def __init__(self, table: int = DEFAULT_TABLE, metric: int = DEFAULT_METRIC,
                 proto: int = RTPROT_CGWD, *, netns: str | None = None, iproute=None):
        if proto in (0, 1, 2, 3, 4):
            raise ValueError(f"protocol id {proto} is reserved by the kernel")
        self.table, self.metric, self.proto = table, metric, proto
        self.netns = netns
        self._given = iproute
        self._tls = threading.local()
        self._all: list = []
        self._lock = threading.RLock()
        self.installed: dict[str, tuple] = {}     # prefix -> tuple[NextHop]
        self.conflicts: dict[str, str] = {}       # prefix -> why not installed
        self.failed: dict[str, str] = {}
        self._ifindex: dict[str, int] = {}
        self.ops = 0

    # ------------------------------------------------------------ netlink plumbing
    @property
    def ipr(self):
        """A pyroute2 IPRoute for the calling thread.

        pyroute2 0.9's synchronous API drives its own asyncio loop, so it cannot be used
        from a thread that runs an event loop: call KernelRoutes from a worker thread
        (RoutingTable does) or from synchronous code.
        """
        if self._given is not None:
            return self._given
        ipr = getattr(self._tls, "ipr", None)
        if ipr is None:
            if self.netns:
                from pyroute2 import NetNS
                ipr = NetNS(self.netns)
            else:
                from pyroute2 import IPRoute
                ipr = IPRoute()
            self._tls.ipr = ipr
            with self._lock:
                self._all.append(ipr)
        return ipr

    def close(self) -> None:
        with self._lock:
            for ipr in self._all:
                try:
                    ipr.close()
                except Exception:
                    pass
            self._all.clear()
            self._tls = threading.local()

    def _index(self, ifname: str) -> int | None:
        idx = self._ifindex.get(ifname)
        if idx is None:
            found = self.ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            idx = self._ifindex[ifname] = found[0]
        return idx

    def _spec(self, prefix: str, nexthops) -> dict | None:
        net = ipaddress.ip_network(prefix, strict=False)
        spec = {"dst": str(net), "table": self.table, "priority": self.metric,
                "proto": self.proto,
                "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET}
        hops = []
        for nh in nexthops:
            idx = self._index(nh.ifname)
            if idx is None:
                continue
            hops.append({"gateway": nh.gateway, "oif": idx})
        if not hops:
            return None
        if len(hops) == 1:
            spec.update(hops[0])
        else:
            spec["multipath"] = hops
        return spec

    def _del(self, prefix: str) -> bool:
        net = ipaddress.ip_network(prefix, strict=False)
        try:
            self.ipr.route("del", dst=str(net), table=self.table, priority=self.metric,
                           proto=self.proto,
                           family=socket.AF_INET6 if net.version == 6 else socket.AF_INET)
            self.ops += 1
            return True
        except Exception as e:
            code = getattr(e, "code", None)
            if code not in (errno.ESRCH, errno.ENOENT):
                log.warning("kernel: delete %s failed: %s", prefix, e)
            return False

    def _add(self, prefix: str, nexthops) -> bool:
        try:
            spec = self._spec(prefix, nexthops)
        except Exception as e:
            self.failed[prefix] = str(e)
            return False
        if spec is None:
            self.failed[prefix] = "tunnel interface not present"
            self._ifindex.clear()
            return False
        try:
            self.ipr.route("add", **spec)
            self.ops += 1
        except Exception as e:
            code = getattr(e, "code", None)
            if code == errno.EEXIST:
                self.conflicts[prefix] = "a route with the same prefix and metric exists " \
                                         "(not installed by cgwd): left alone"
                log.warning("kernel: %s: %s", prefix, self.conflicts[prefix])
            else:
                if code == errno.ENODEV:
                    self._ifindex.clear()
                self.failed[prefix] = str(e)
                log.warning("kernel: add %s via %s failed: %s", prefix, nexthops, e)
            return False
        self.conflicts.pop(prefix, None)
        self.failed.pop(prefix, None)
        return True

    # ------------------------------------------------------------ public API
    @_off_loop
    def apply(self, changes) -> None:
        """Apply a rib.RibChanges (add / replace / remove)."""
        with self._lock:
            for p in changes.remove:
                self.conflicts.pop(p, None)
                self.failed.pop(p, None)
                if self.installed.pop(p, None) is not None:
                    self._del(p)
            for p, nhs in changes.replace.items():
                if p in self.installed:
                    self._del(p)
                    del self.installed[p]
                if self._add(p, nhs):
                    self.installed[p] = nhs
            for p, nhs in changes.add.items():
                if p in self.installed:
                    self._del(p)
                    del self.installed[p]
                if self._add(p, nhs):
                    self.installed[p] = nhs

    @_off_loop
    def remove_all(self) -> None:
        with self._lock:
            for p in list(self.installed):
                self._del(p)
            self.installed.clear()
            self.conflicts.clear()
            self.failed.clear()

    @_off_loop
    def dump(self) -> dict[str, list[tuple[str, int]]]:
        """Our routes in the kernel table: prefix -> [(gateway, oif), ...]."""
        out: dict[str, list] = {}
        with self._lock:
            for fam in (socket.AF_INET, socket.AF_INET6):
                try:
                    msgs = self.ipr.route("dump", family=fam, table=self.table)
                except Exception as e:
                    log.warning("kernel: route dump failed: %s", e)
                    continue
                for msg in msgs:
                    if msg.get("proto") != self.proto:
                        continue
                    if (msg.get_attr("RTA_TABLE") or msg.get("table")) != self.table:
                        continue
                    if (msg.get_attr("RTA_PRIORITY") or 0) != self.metric:
                        continue
                    dst = msg.get_attr("RTA_DST") or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
                    prefix = f"{dst}/{msg['dst_len']}"
                    hops = []
                    mp = msg.get_attr("RTA_MULTIPATH")
                    if mp:
                        for h in mp:
                            hops.append((h.get_attr("RTA_GATEWAY"), h.get("oif")))
                    else:
                        hops.append((msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF")))
                    out[str(ipaddress.ip_network(prefix, strict=False))] = sorted(hops, key=str)
        return out

    @_off_loop
    def reconcile(self, desired: dict) -> dict:
        """Make the kernel match ``desired`` (prefix -> tuple[NextHop]) for our routes.

        Re-adds routes the kernel dropped (e.g. after an interface flap) and removes our
        routes that no longer belong.  Returns counts {'added', 'removed', 'fixed'}.
        """
        stats = {"added": 0, "removed": 0, "fixed": 0}
        with self._lock:
            self._ifindex.clear()
            have = self.dump()
            for p, hops in have.items():
                if p not in desired:
                    if self._del(p):
                        stats["removed"] += 1
                    self.installed.pop(p, None)
            for p, nhs in desired.items():
                want = None
                try:
                    spec = self._spec(p, nhs)
                except Exception:
                    spec = None
                if spec is not None:
                    if "multipath" in spec:
                        want = sorted(((h["gateway"], h["oif"]) for h in spec["multipath"]), key=str)
                    else:
                        want = [(spec["gateway"], spec["oif"])]
                cur = have.get(p)
                if cur is not None and cur == want:
                    self.installed[p] = nhs
                    continue
                if cur is not None:
                    self._del(p)
                    self.installed.pop(p, None)
                    stats["fixed"] += 1
                else:
                    self.installed.pop(p, None)
                if want is None:
                    self.failed[p] = "tunnel interface not present"
                    continue
                if self._add(p, nhs):
                    self.installed[p] = nhs
                    if cur is None:
                        stats["added"] += 1
        if any(stats.values()):
            log.info("kernel reconcile: %s", stats)
        return stats

    @_off_loop
    def flush_stale(self, protocol: int | None = None) -> int:
        """Start-up cleanup after a crash: delete every route with our protocol id (or
        ``protocol``) in our table.  Routes of other protocols are never touched."""
        proto = self.proto if protocol is None else protocol
        if proto in (0, 1, 2, 3, 4):
            raise ValueError("refusing to flush kernel/boot/static routes")
        n = 0
        with self._lock:
            for fam in (socket.AF_INET, socket.AF_INET6):
                try:
                    msgs = list(self.ipr.route("dump", family=fam, table=self.table))
                except Exception as e:
                    log.warning("kernel: dump failed: %s", e)
                    continue
                for msg in msgs:
                    if msg.get("proto") != proto:
                        continue
                    if (msg.get_attr("RTA_TABLE") or msg.get("table")) != self.table:
                        continue
                    dst = msg.get_attr("RTA_DST") or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
                    # the dumped route's own scope: a delete with another scope matches nothing
                    kw = {"dst": f"{dst}/{msg['dst_len']}", "table": self.table, "proto": proto,
                          "family": fam, "scope": msg.get("scope", 0)}
                    prio = msg.get_attr("RTA_PRIORITY")
                    if prio is not None:
                        kw["priority"] = prio
                    try:
                        self.ipr.route("del", **kw)
                        n += 1
                    except Exception as e:
                        log.warning("kernel: flush %s failed: %s", kw["dst"], e)
            if proto == self.proto:
                self.installed.clear()
        if n:
            log.info("kernel: flushed %d stale routes with protocol %d from table %d", n, proto, self.table)
        return n
