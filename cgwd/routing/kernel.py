"""Install the routes the RIB selected in the Linux kernel with pyroute2.

Routes go out through the tunnel interface (oif) with the AWS inside address (.1) as
gateway, in a configurable table (default main, 254), metric (default 100) and with our
own routing protocol id **157** ("cgwd"; named neither in iproute2's rt_protos nor in the
kernel's RTPROT_* list, and outside FRR's 186-198, whose rt_protos.d calls 196 "static": a
box that also runs FRR keeps its static routes; `ip route show proto 157` lists ours).

Safety: every delete is qualified with our protocol id, and the kernel refuses to delete
a route whose protocol differs (fib_table_delete matches rtm_protocol); we never use
NLM_F_REPLACE: a change is "delete ours, then add exclusively", so a route another daemon
installed with the same prefix/metric is left alone (counted in ``conflicts``).

Speed: bulk changes (thousands of routes after a session comes up, a tunnel failover,
reconciliation after an interface flap) are sent as netlink *batches*: up to
``BATCH_MSGS`` RTM_NEWROUTE/RTM_DELROUTE requests in one sendmsg() on a NETLINK_ROUTE
socket, each with NLM_F_ACK and its own sequence number, then the ACKs are read and
matched by sequence number, so every route still gets its own result (EEXIST ->
conflict, ENODEV -> interface gone, ...).  The messages are compiled by pyroute2
(``IPBatch``) once per shape (family, prefix length, next hops, command) and only the
destination address and sequence number are patched per route.  pyroute2's
per-request path (several hundred microseconds a route) is used for small changes and
when an ``iproute`` or ``netns`` is given (unit-test fakes). Dumps (reconciliation) are read
from a plain netlink socket, and only our protocol's messages are decoded (by pyroute2's
``rtmsg``): one dump per family serves both metrics.

Fail closed: ``guard_add``/``guard_remove`` of a change set install/remove an
``unreachable`` route per guarded prefix at ``unreachable_metric`` (worse than ``metric``;
default metric + 1000), with our protocol id and no interface: while a tunnel route exists
it wins, when none does the prefix is unreachable instead of following the default route
in cleartext, and the death of a TUN (which takes its routes along) cannot remove it.

Several instances (one per VPN's routing table) may share a table, metric and protocol
id: reconciliation never removes a route another live instance installed.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
import weakref

log = logging.getLogger("cgwd.routing.kernel")

RTPROT_CGWD = 157
DEFAULT_TABLE = 254
DEFAULT_METRIC = 100
UNREACHABLE_OFFSET = 1000  # fail-closed routes: metric + this
RTN_UNICAST = 1
RTN_UNREACHABLE = 7

BATCH_MSGS = 256           # requests per sendmsg(); their ACKs must fit our socket's rcvbuf
SHARED_SCAN_TTL = 1.0      # seconds a route scan serves the other instances on its table
BATCH_MIN = 8              # fewer routes than this go through pyroute2's request path
_NLMSG_ERROR = 2
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10      # error ACKs without a copy of the request
_RTA_DST = 1
_HDR = struct.Struct("=IHHII")
_SO_RCVBUFFORCE = 33       # Linux; Python's socket module lacks the name
_SO_SNDBUFFORCE = 32


class _Op:
    """One route change for the batch: ``kind`` "add" or "del"."""
    __slots__ = ("kind", "prefix", "net", "nhs", "spec", "err")

    def __init__(self, kind, prefix, net, nhs=None, spec=None):
        self.kind, self.prefix, self.net, self.nhs, self.spec = kind, prefix, net, nhs, spec
        self.err = None


class _NetlinkBatcher:
    """Sends many route requests per sendmsg() and matches the ACKs (see module doc)."""

    def __init__(self):
        self.sock = None
        self.seq = 0
        self._tmpl: dict = {}

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _open(self):
        if self.sock is None:
            sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            try:
                sk.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            except OSError:
                pass
            # every ACK is its own skb (~1 KiB of rcvbuf): room for a whole batch of them
            for force, opt in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                try:
                    sk.setsockopt(socket.SOL_SOCKET, force, 1 << 20)
                except OSError:
                    try:
                        sk.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
                    except OSError:
                        pass
            sk.bind((0, 0))
            sk.settimeout(10)
            self.sock = sk
        return self.sock

    def _template(self, kind: str, spec: dict, plen: int):
        """(bytearray message, offset of the RTA_DST payload, its length) for this shape."""
        fam = spec["family"]
        hops = spec.get("multipath")
        key = (kind, fam, plen, spec.get("type"), spec.get("priority"), spec.get("gateway"), spec.get("oif"),
               tuple((h["gateway"], h["oif"]) for h in hops) if hops else None)
        t = self._tmpl.get(key)
        if t is not None:
            return t
        if len(self._tmpl) > 512:           # interfaces come and go (new ifindex): bound it
            self._tmpl.clear()
        # a fresh compiler per shape (a few ms, a handful of shapes per run): pyroute2's
        # synchronous objects belong to the thread that made them
        from pyroute2 import IPBatch
        # a placeholder destination that is never all zeroes (pyroute2 may drop a zero one)
        dummy = "10.0.0.0" if fam == socket.AF_INET else "2001:db8::"
        kw = {k: v for k, v in spec.items() if k != "dst"}
        kw["dst"] = f"{dummy}/{plen}"
        ipb = IPBatch()
        try:
            ipb.route(kind, **kw)
            msg = bytearray(ipb.batch)
        finally:
            ipb.close()
        alen = 4 if fam == socket.AF_INET else 16
        off = 16 + 12                          # nlmsghdr + rtmsg
        dst_off = None
        while off + 4 <= len(msg):
            rlen, rtype = struct.unpack_from("=HH", msg, off)
            if rlen < 4:
                break
            if rtype == _RTA_DST and rlen == 4 + alen:
                dst_off = off + 4
                break
            off += (rlen + 3) & ~3
        if dst_off is None or _HDR.unpack_from(msg, 0)[0] != len(msg):
            raise RuntimeError(f"cannot build a netlink template for {kind} {spec}")
        struct.pack_into("=I", msg, 12, 0)     # nlmsg_pid: let the kernel fill it
        t = self._tmpl[key] = (msg, dst_off, alen)
        return t

    def run(self, ops: list) -> None:
        """Send ``ops`` (.spec: the pyroute2 route() keywords; .net: the destination);
        set each op.err to 0 or a positive errno."""
        sk = self._open()
        for i in range(0, len(ops), BATCH_MSGS):
            chunk = ops[i:i + BATCH_MSGS]
            parts = []
            by_seq = {}
            for op in chunk:
                msg, dst_off, alen = self._template(op.kind, op.spec, op.net.prefixlen)
                self.seq = (self.seq % 0x7FFFFFFF) + 1
                m = bytearray(msg)
                struct.pack_into("=I", m, 8, self.seq)
                m[dst_off:dst_off + alen] = op.net.network_address.packed
                parts.append(m)
                by_seq[self.seq] = op
            try:
                sk.send(b"".join(parts))
                while by_seq:
                    data = sk.recv(1 << 20)
                    off = 0
                    while off + 16 <= len(data):
                        mlen, mtype, _fl, seq, _pid = _HDR.unpack_from(data, off)
                        if mlen < 16:
                            break
                        if mtype == _NLMSG_ERROR and seq in by_seq:
                            code = struct.unpack_from("=i", data, off + 16)[0]
                            by_seq.pop(seq).err = -code
                        off += (mlen + 3) & ~3
            except OSError as e:
                # no answer or socket trouble: unknown outcome; reopen next time
                for op in by_seq.values():
                    op.err = e.errno or errno.EIO
                self.close()
                sk = self._open()


_RTM_GETROUTE = 26
_NLMSG_DONE = 3
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_RTMSG = struct.Struct("=BBBBBBBBI")   # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RT_TABLE_COMPAT = 252                 # rtm_table when the table id does not fit a byte


def _raw_route_dump(fam: int, proto: int, table: int):
    """RTM_GETROUTE dump of one family on a plain netlink socket; yields pyroute2 ``rtmsg``
    objects (decoded by pyroute2) for the messages whose header says ``proto`` and whose
    table byte can be ``table``; the caller still checks the table attribute."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    want_table = table if table < 256 else _RT_TABLE_COMPAT
    sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sk.settimeout(10)
        sk.bind((0, 0))
        body = _RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)
        sk.send(_HDR.pack(16 + len(body), _RTM_GETROUTE, _NLM_F_REQUEST_DUMP, 1, 0) + body)
        while True:
            data = sk.recv(1 << 20)
            if not data:
                return
            off = 0
            while off + 16 <= len(data):
                mlen, mtype, _fl, _seq, _pid = _HDR.unpack_from(data, off)
                if mlen < 16 or off + mlen > len(data):
                    raise OSError(errno.EBADMSG, "truncated netlink message in a route dump")
                if mtype == _NLMSG_DONE:
                    return
                if mtype == _NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(-code, f"route dump: {os.strerror(-code)}")
                if mlen >= 16 + _RTMSG.size:
                    _f, _d, _s, _t, rtable, rproto, _sc, _ty, _fl2 = _RTMSG.unpack_from(data, off + 16)
                    if rproto == proto and rtable == want_table:
                        msg = rtmsg(data[off:off + mlen])
                        msg.decode()
                        yield msg
                off += (mlen + 3) & ~3
    finally:
        sk.close()


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
    _live: "weakref.WeakSet[KernelRoutes]" = weakref.WeakSet()
    # the shared scan of a (table, protocol) in our namespace (see _dump_raw); the generation
    # moves whenever any instance sends route changes
    _scan_lock = threading.Lock()
    _scans: dict = {}
    _scan_locks: dict = {}
    _generation = 0

    def __init__(self, table: int = DEFAULT_TABLE, metric: int = DEFAULT_METRIC,
                 proto: int = RTPROT_CGWD, *, netns: str | None = None, iproute=None,
                 unreachable_metric: int | None = None):
        if proto in (0, 1, 2, 3, 4):
            raise ValueError(f"protocol id {proto} is reserved by the kernel")
        if unreachable_metric is None:
            unreachable_metric = min(metric + UNREACHABLE_OFFSET, 2**32 - 1)
        if unreachable_metric <= metric:
            raise ValueError(f"the fail-closed metric ({unreachable_metric}) must be worse (higher) "
                             f"than the route metric ({metric})")
        self.table, self.metric, self.proto = table, metric, proto
        self.unreachable_metric = unreachable_metric
        self.unreachable: set[str] = set()        # guarded prefixes with our unreachable route
        self.netns = netns
        self._given = iproute
        self._tls = threading.local()
        self._all: list = []
        self._lock = threading.RLock()
        self.installed: dict[str, tuple] = {}     # prefix -> tuple[NextHop]
        self.conflicts: dict[str, str] = {}       # prefix -> why not installed
        self.failed: dict[str, str] = {}
        self._ifindex: dict[str, int] = {}
        self.ops = 0                              # route changes the kernel accepted
        self.batches = 0
        self._batcher = _NetlinkBatcher()
        self._batch_ok = True
        KernelRoutes._live.add(self)

    def _siblings_claim(self, attr: str) -> set:
        """Prefixes other live instances on the same table/metric/protocol installed."""
        out: set = set()
        key = (self.netns, self.table, self.metric, self.proto)
        for k in list(KernelRoutes._live):
            if k is not self and (k.netns, k.table, k.metric, k.proto) == key:
                out.update(list(getattr(k, attr)))
        return out

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
        shared = getattr(threading.current_thread(), "cgwd_iprs", None)
        if shared is not None:     # the routing tables' shared worker: one socket per namespace
            ipr = shared.get(self.netns)
            if ipr is None:
                ipr = shared[self.netns] = self._new_ipr()
            return ipr
        ipr = getattr(self._tls, "ipr", None)
        if ipr is None:
            ipr = self._new_ipr()
            self._tls.ipr = ipr
            with self._lock:
                self._all.append(ipr)
        return ipr

    def _new_ipr(self):
        if self.netns:
            from pyroute2 import NetNS
            return NetNS(self.netns)
        from pyroute2 import IPRoute
        return IPRoute()

    def close(self) -> None:
        with self._lock:
            for ipr in self._all:
                try:
                    ipr.close()
                except Exception:
                    pass
            self._all.clear()
            self._tls = threading.local()
            self._batcher.close()

    def _index(self, ifname: str) -> int | None:
        idx = self._ifindex.get(ifname)
        if idx is None:
            if self.netns is None and self._given is None:
                # our own namespace: one ioctl, not pyroute2's dump of every link (which was
                # 7 % of an idle 50-tunnel daemon's CPU: each reconcile looks every name up)
                try:
                    idx = socket.if_nametoindex(ifname)
                except OSError:
                    return None
            else:
                found = self.ipr.link_lookup(ifname=ifname)
                if not found:
                    return None
                idx = found[0]
            self._ifindex[ifname] = idx
        return idx

    def _spec(self, prefix: str, nexthops, net=None) -> dict | None:
        net = net or ipaddress.ip_network(prefix, strict=False)
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

    def _del_op(self, prefix: str) -> _Op:
        net = ipaddress.ip_network(prefix, strict=False)
        return _Op("del", prefix, net, None,
                   {"dst": str(net), "table": self.table, "priority": self.metric,
                    "proto": self.proto,
                    "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET})

    def _unr_op(self, kind: str, prefix: str) -> _Op:
        net = ipaddress.ip_network(prefix, strict=False)
        return _Op(kind, prefix, net, None,
                   {"dst": str(net), "table": self.table, "priority": self.unreachable_metric,
                    "proto": self.proto, "type": "unreachable",
                    "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET})

    def _add_op(self, prefix: str, nexthops) -> _Op | None:
        """An "add" for the batch, or None (recorded in ``failed``) when impossible."""
        try:
            net = ipaddress.ip_network(prefix, strict=False)
            spec = self._spec(prefix, nexthops, net)
        except Exception as e:
            self.failed[prefix] = str(e)
            return None
        if spec is None:
            self.failed[prefix] = "tunnel interface not present"
            self._ifindex.clear()
            return None
        return _Op("add", prefix, net, nexthops, spec)

    def _execute(self, ops: list) -> None:
        """Run the ops in order (batched when possible) and record their outcome."""
        if not ops:
            return
        with KernelRoutes._scan_lock:
            KernelRoutes._generation += 1
        if (self._batch_ok and self._given is None and self.netns is None
                and len(ops) >= BATCH_MIN):
            try:
                self._batcher.run(ops)
            except Exception as e:    # e.g. a template pyroute2 would not build
                log.warning("kernel: netlink batching unavailable (%s); one request per route", e)
                self._batch_ok = False
        for op in ops:
            if op.err is not None:
                continue
            try:
                self.ipr.route(op.kind, **op.spec)
                op.err = 0
            except Exception as e:
                code = getattr(e, "code", None)
                op.err = code if isinstance(code, int) and code > 0 else errno.EIO
        self.batches += 1
        with KernelRoutes._scan_lock:
            KernelRoutes._generation += 1   # again: a scan that overlapped the changes is stale
        logged = 0
        for op in ops:
            if op.err == 0:
                self.ops += 1
        for op in ops:
            p, err = op.prefix, op.err
            if op.spec.get("type") == "unreachable":
                if op.kind == "add" and err in (0, errno.EEXIST):
                    self.unreachable.add(p)
                elif op.kind == "add" and logged < 5:
                    logged += 1
                    log.warning("kernel: fail-closed route for %s not installed: %s", p, os.strerror(err))
                continue
            if op.kind == "del":
                if err not in (0, errno.ESRCH, errno.ENOENT) and logged < 5:
                    logged += 1
                    log.warning("kernel: delete %s failed: %s", p, os.strerror(err))
                continue
            if err == 0:
                self.installed[p] = op.nhs
                self.conflicts.pop(p, None)
                self.failed.pop(p, None)
            elif err == errno.EEXIST:
                self.conflicts[p] = "a route with the same prefix and metric exists " \
                                    "(not installed by cgwd): left alone"
                if logged < 5:
                    logged += 1
                    log.warning("kernel: %s: %s", p, self.conflicts[p])
            else:
                if err == errno.ENODEV:
                    self._ifindex.clear()
                self.failed[p] = os.strerror(err)
                if logged < 5:
                    logged += 1
                    log.warning("kernel: add %s via %s failed: %s", p, op.nhs, os.strerror(err))
        bad = sum(1 for op in ops if op.err not in (0, errno.ESRCH, errno.ENOENT))
        if bad > logged:
            log.warning("kernel: %d of %d route changes failed (first %d logged)", bad, len(ops), logged)

    # ------------------------------------------------------------ public API
    @_off_loop
    def apply(self, changes) -> None:
        """Apply a rib.RibChanges (add / replace / remove)."""
        with self._lock:
            ops = []
            for p in changes.remove:
                self.conflicts.pop(p, None)
                self.failed.pop(p, None)
                if self.installed.pop(p, None) is not None:
                    ops.append(self._del_op(p))
            for items in (changes.replace.items(), changes.add.items()):
                for p, nhs in items:
                    if p in self.installed:
                        ops.append(self._del_op(p))
                        del self.installed[p]
                    op = self._add_op(p, nhs)
                    if op is not None:
                        ops.append(op)
            for p in changes.guard_remove:
                if p in self.unreachable:
                    self.unreachable.discard(p)
                    ops.append(self._unr_op("del", p))
            for p in changes.guard_add:
                if p not in self.unreachable:
                    ops.append(self._unr_op("add", p))
            self._execute(ops)

    @_off_loop
    def remove_all(self) -> None:
        """Remove every route this instance installed, fail-closed routes included."""
        with self._lock:
            ops = [self._del_op(p) for p in self.installed]
            ops += [self._unr_op("del", p) for p in self.unreachable]
            self.installed.clear()
            self.unreachable.clear()
            self._execute(ops)
            self.conflicts.clear()
            self.failed.clear()

    def _dump_raw(self) -> list[tuple[str, int, int, list]]:
        """Our routes (protocol id, table) at our two metrics: (prefix, type, metric, hops)
        per route (hops: [(gateway, oif), ...] sorted), from one dump per family.

        In our own namespace the scan is shared by the instances on the same table and
        protocol (one per VPN's routing table): each reconciles on the same grid of
        ``reconcile_interval`` (RoutingTable.maintain), and a scan younger than
        ``SHARED_SCAN_TTL`` is reused by the others as long as no instance changed a route
        since it began (a hub of 25 VPN connections read the whole table 25 times a round)."""
        metrics = (self.metric, self.unreachable_metric)
        if self._given is not None or self.netns is not None:
            return [r for r in self._scan_rows(filter_metrics=metrics) if r[2] in metrics]
        key = (self.table, self.proto)
        with KernelRoutes._scan_lock:
            lock = KernelRoutes._scan_locks.setdefault(key, threading.Lock())
        with lock:   # the instances reconciling in the same round wait for one scan
            with KernelRoutes._scan_lock:
                hit = KernelRoutes._scans.get(key)
                gen = KernelRoutes._generation
            if hit is None or hit[0] != gen or time.monotonic() - hit[1] >= SHARED_SCAN_TTL:
                started = time.monotonic()
                rows = self._scan_rows()
                if rows is not None:
                    with KernelRoutes._scan_lock:
                        KernelRoutes._scans[key] = hit = (gen, started, rows)
                else:
                    hit = (gen, started, [])
        return [r for r in hit[2] if r[2] in metrics]

    def _scan_rows(self, filter_metrics: tuple | None = None) -> list | None:
        """One dump per family: (prefix, type, metric, hops) of our protocol and table
        (only at ``filter_metrics`` when given); None when a dump failed (not to be shared)."""
        rows = []
        ok = True
        for fam in (socket.AF_INET, socket.AF_INET6):
            try:
                msgs = self._route_dump(fam)
            except Exception as e:
                log.warning("kernel: route dump failed: %s", e)
                ok = False
                continue
            for msg in msgs:
                if msg.get("proto") != self.proto:
                    continue
                if (msg.get_attr("RTA_TABLE") or msg.get("table")) != self.table:
                    continue
                metric = msg.get_attr("RTA_PRIORITY") or 0
                if filter_metrics is not None and metric not in filter_metrics:
                    continue
                dst = msg.get_attr("RTA_DST") or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
                prefix = str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
                rtype = msg.get("type", RTN_UNICAST)
                hops = []
                if rtype in (None, RTN_UNICAST):
                    mp = msg.get_attr("RTA_MULTIPATH")
                    if mp:
                        hops = [(h.get_attr("RTA_GATEWAY"), h.get("oif")) for h in mp]
                    else:
                        hops = [(msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"))]
                rows.append((prefix, rtype, metric, sorted(hops, key=str)))
        return rows if ok or filter_metrics is not None else None

    def _route_dump(self, fam: int):
        """The kernel's routes of one family: pyroute2 ``rtmsg`` objects. In our own
        namespace the dump is read from a plain NETLINK_ROUTE socket and only the messages
        whose header names our protocol (and table) are decoded by pyroute2's ``rtmsg``:
        pyroute2's synchronous request path costs ~250 us a route, which made a reconcile
        of every VPN's table every 30 s the larger part of an idle hub's CPU (bench/scale.py)."""
        if self._given is not None or self.netns is not None:
            return self.ipr.route("dump", family=fam, table=self.table)
        return list(_raw_route_dump(fam, self.proto, self.table))

    def _scan(self) -> tuple[dict[str, list[tuple[str, int]]], set[str]]:
        """(our routes: prefix -> [(gateway, oif), ...], our fail-closed routes)."""
        routes: dict[str, list] = {}
        unreachable: set[str] = set()
        for prefix, rtype, metric, hops in self._dump_raw():
            if metric == self.unreachable_metric:
                if rtype == RTN_UNREACHABLE:
                    unreachable.add(prefix)
            elif rtype in (None, RTN_UNICAST):
                routes[prefix] = hops
        return routes, unreachable

    @_off_loop
    def dump(self) -> dict[str, list[tuple[str, int]]]:
        """Our routes in the kernel table: prefix -> [(gateway, oif), ...]."""
        with self._lock:
            return self._scan()[0]

    @_off_loop
    def dump_unreachable(self) -> set[str]:
        """Our fail-closed routes in the kernel table (unreachable, at unreachable_metric)."""
        with self._lock:
            return self._scan()[1]

    @_off_loop
    def reconcile(self, desired: dict, guarded=None) -> dict:
        """Make the kernel match ``desired`` (prefix -> tuple[NextHop]) for our routes, and,
        when ``guarded`` (a set of prefixes) is given, the fail-closed routes too.

        Re-adds routes the kernel dropped (e.g. after an interface flap) and removes our
        routes that no longer belong (never one another live instance installed).
        Returns counts {'added', 'removed', 'fixed'}.
        """
        stats = {"added": 0, "removed": 0, "fixed": 0}
        with self._lock:
            self._ifindex.clear()
            have, have_u = self._scan()
            others = self._siblings_claim("installed")
            ops = []
            removed, added = [], []
            for p in have:
                if p not in desired and p not in others:
                    op = self._del_op(p)
                    ops.append(op)
                    removed.append(op)
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
                self.installed.pop(p, None)
                if cur is not None:
                    ops.append(self._del_op(p))
                    stats["fixed"] += 1
                if want is None:
                    self.failed[p] = "tunnel interface not present"
                    continue
                op = self._add_op(p, nhs)
                if op is not None:
                    ops.append(op)
                    if cur is None:
                        added.append(op)
            if guarded is not None:
                others_u = self._siblings_claim("unreachable")
                for p in have_u - set(guarded) - others_u:
                    op = self._unr_op("del", p)
                    ops.append(op)
                    removed.append(op)
                self.unreachable = set(guarded) & have_u
                for p in set(guarded) - have_u:
                    op = self._unr_op("add", p)
                    ops.append(op)
                    added.append(op)
            self._execute(ops)
            stats["removed"] = sum(1 for op in removed if op.err == 0)
            stats["added"] = sum(1 for op in added if op.err == 0)
        if any(stats.values()):
            log.info("kernel reconcile: %s", stats)
        return stats

    @_off_loop
    def flush_stale(self, protocol: int | None = None, *, keep_unreachable: bool = False) -> int:
        """Start-up cleanup after a crash: delete every route with our protocol id (or
        ``protocol``) in our table.  Routes of other protocols are never touched.

        ``keep_unreachable``: the crashed run's fail-closed routes (unreachable, at our
        unreachable metric) stay, their prefixes in :attr:`kept`, so that what it guarded is
        not sent in cleartext before the new run guards it again (it adopts them)."""
        proto = self.proto if protocol is None else protocol
        if proto in (0, 1, 2, 3, 4):
            raise ValueError("refusing to flush kernel/boot/static routes")
        n = 0
        self.kept: set[str] = set()
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
                          "family": fam, "scope": msg.get("scope", 0),
                          "type": msg.get("type", RTN_UNICAST)}
                    prio = msg.get_attr("RTA_PRIORITY")
                    if prio is not None:
                        kw["priority"] = prio
                    if (keep_unreachable and proto == self.proto and kw["type"] == RTN_UNREACHABLE
                            and prio == self.unreachable_metric):
                        self.kept.add(str(ipaddress.ip_network(kw["dst"], strict=False)))
                        continue
                    try:
                        self.ipr.route("del", **kw)
                        n += 1
                    except Exception as e:
                        log.warning("kernel: flush %s failed: %s", kw["dst"], e)
            if proto == self.proto:
                self.installed.clear()
                self.unreachable.clear()
        if n:
            log.info("kernel: flushed %d stale routes with protocol %d from table %d", n, proto, self.table)
        return n
