"""RoutingTable: one VPN connection's routes: route sources (one per tunnel) -> RIB -> kernel.

The daemon makes one ``RoutingTable(RoutingSettings.from_config(config, vpn), kernel=...)``
per VPN connection, calls :meth:`RoutingTable.start` once (inside the event loop: kernel
worker, fail-closed routes, maintenance task) and ``await`` :meth:`RoutingTable.stop` at
shutdown or when a reload removes the VPN. A reload that changes VPN-level settings calls
:meth:`RoutingTable.reconfigure`, which applies them in place.

Per tunnel the daemon reports the data path: :meth:`tunnel_up` when the tunnel's interface
carries traffic, :meth:`tunnel_down` when it does not (its routes leave at once). Route
sources offer routes in between (:mod:`cgwd.routing.source`).

Kernel work (netlink) runs in one worker thread so that installing thousands of routes
never blocks the event loop (keepalives must keep flowing); ``flush()`` waits for it.
The maintenance task (graceful-restart stale expiry and kernel reconciliation, fail-closed
routes included) is supervised: an error is logged and the next round runs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import queue
import threading
import time
from dataclasses import dataclass

from ..bgp.policy import MAX_PREFIX_ACTIONS, ImportPolicy
from .rib import Rib, RibChanges

log = logging.getLogger("cgwd.routing.table")


def _prefixes(values) -> tuple:
    return tuple(dict.fromkeys(str(ipaddress.ip_network(str(p), strict=False)) for p in values))


@dataclass(frozen=True)
class RoutingSettings:
    """Every VPN-level setting the routing layer runs with (and nothing else)."""
    ecmp: bool = False
    import_policy: ImportPolicy | str | list | None = None   # normalised to an ImportPolicy
    max_prefix: int | None = 1000
    max_prefix_action: str = "warn"
    own_prefixes: tuple = ()          # what we advertise: never imported back
    inside: tuple = ()                # the tunnels' inside CIDRs (/30s, /126s): never imported
    protected: tuple = ()             # outside addresses (local, public, remote): no route may cover them
    fail_closed: bool = True          # guarded prefixes unreachable while no tunnel carries them
    static_routes: tuple = ()         # configured prefixes (static routing): guarded from the start
    reconcile_interval: float = 30.0
    # static routing (routing = "static"): who carries the routes, how they move back
    routing: str = "bgp"              # "bgp" or "static"
    static_primary: str = ""          # the tunnel carrying the routes while it is up ("": the first)
    static_hold_down: float = 60.0    # seconds a returning tunnel is only a backup
    health_check: float | None = None  # seconds between ICMP echoes to AWS's inside address

    def __post_init__(self):
        sa = object.__setattr__
        own = _prefixes(self.own_prefixes)
        sa(self, "own_prefixes", own)
        inside = _prefixes(self.inside)
        sa(self, "inside", inside)
        policy = ImportPolicy.from_config(self.import_policy, own)
        missing = tuple(p for p in inside if p not in policy.inside)
        sa(self, "import_policy", policy.with_inside(missing) if missing else policy)
        sa(self, "protected", tuple(sorted({str(ipaddress.ip_address(str(a))) for a in self.protected})))
        sa(self, "static_routes", _prefixes(self.static_routes))
        if self.max_prefix_action not in MAX_PREFIX_ACTIONS:
            raise ValueError(f"max_prefix_action must be one of {MAX_PREFIX_ACTIONS}")
        if self.max_prefix is not None and self.max_prefix < 1:
            raise ValueError("max_prefix must be at least 1 (or None for no limit)")
        if not self.reconcile_interval > 0:
            raise ValueError("reconcile_interval must be > 0")
        if self.routing not in ("bgp", "static"):
            raise ValueError(f"routing must be \"bgp\" or \"static\" (got {self.routing!r})")
        if self.static_hold_down < 0:
            raise ValueError("static_hold_down must be >= 0 seconds")
        if self.health_check is not None and not self.health_check > 0:
            raise ValueError("health_check must be > 0 seconds or None")

    @classmethod
    def from_config(cls, config, vpn) -> "RoutingSettings":
        """The settings of ``vpn`` (a :class:`cgwd.config.VpnConfig` of ``config``).

        ``protected`` holds the outside addresses of every tunnel of the whole config: a
        route of one VPN covering another VPN's endpoint would capture its IKE/ESP too.
        """
        addrs = set()
        for t in config.tunnels:
            addrs.update(str(a) for a in (t.local_address, t.public_address, t.remote_address))
        primary = vpn.static_primary or (vpn.tunnels[0].name if vpn.tunnels else "")
        return cls(ecmp=vpn.ecmp, import_policy=vpn.import_policy, max_prefix=vpn.max_prefix,
                   max_prefix_action=vpn.max_prefix_action,
                   own_prefixes=tuple(str(p) for p in vpn.advertise), protected=tuple(addrs),
                   inside=tuple(str(t.inside_cidr) for t in vpn.tunnels),
                   fail_closed=vpn.fail_closed, static_routes=tuple(str(p) for p in vpn.static_routes),
                   reconcile_interval=config.daemon.reconcile_interval, routing=vpn.routing,
                   static_primary=primary if vpn.routing == "static" else "",
                   static_hold_down=vpn.static_hold_down, health_check=vpn.health_check)


class KernelWorker:
    """The one thread that applies every routing table's kernel work, in order per table.

    One per process, shared by the VPN connections' tables: a hub of 25 connections had 25
    threads, each with its own pyroute2 socket and event loop (bench/scale.py: ~60 KiB a
    connection). Changes queued for a table are merged until that table's next other item
    (reconcile, cleanup, barrier), so a burst of UPDATEs still becomes one netlink batch.
    Started by the first table that needs it, stopped when the last one closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._q = queue.Queue()
                self._thread = threading.Thread(target=self._run, args=(self._q,), name="cgwd-routing-kernel",
                                                daemon=True)
                self._thread.cgwd_iprs = {}   # the pyroute2 sockets of this thread (KernelRoutes.ipr)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            thread, q = self._thread, self._q
            self._thread = self._q = None
        q.put((None, "stop", None))
        thread.join(timeout=30)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def put(self, table: "RoutingTable", kind: str, arg) -> None:
        with self._lock:
            q = self._q
        if q is None:
            raise RuntimeError("kernel worker not started (acquire() first)")
        q.put((table, kind, arg))

    def barrier(self, table: "RoutingTable", timeout: float | None) -> bool:
        """Wait until everything queued for ``table`` so far is applied."""
        done = threading.Event()
        self.put(table, "barrier", done)
        return done.wait(timeout)

    @staticmethod
    def _apply(table: "RoutingTable", ch: RibChanges) -> None:
        try:
            table.kernel.apply(ch)
        except Exception:
            table.kernel_errors += 1
            log.exception("kernel route worker")

    def _run(self, q: queue.Queue) -> None:
        stop = False
        try:
            while not stop:
                items = [q.get()]
                while True:          # coalesce what is queued
                    try:
                        items.append(q.get_nowait())
                    except queue.Empty:
                        break
                pending: dict[int, tuple] = {}   # id(table) -> (table, merged changes)
                for table, kind, arg in items:
                    if kind == "apply":
                        prev = pending.get(id(table))
                        pending[id(table)] = (table, arg if prev is None else prev[1].merge(arg))
                        continue
                    if kind == "stop":
                        stop = True
                        continue
                    held = pending.pop(id(table), None)
                    if held is not None:
                        self._apply(*held)
                    try:
                        if kind == "reconcile":
                            table.kernel.reconcile(*arg)
                        elif kind == "remove_all":
                            table.kernel.remove_all()
                        elif kind == "flush_stale":
                            table.kernel.flush_stale(arg)
                        elif kind == "barrier":
                            arg.set()
                    except Exception:
                        table.kernel_errors += 1
                        log.exception("kernel route worker")
                for held in pending.values():
                    self._apply(*held)
                for _ in items:
                    q.task_done()
        finally:
            for ipr in threading.current_thread().cgwd_iprs.values():
                try:
                    ipr.close()
                except Exception:
                    pass


KERNEL_WORKER = KernelWorker()


class RoutingTable:
    def __init__(self, settings: RoutingSettings | None = None, *, kernel=None, clock=time.monotonic,
                 threaded: bool = True, name: str = "", kernel_worker: KernelWorker | None = None,
                 **settings_kw):
        if settings is None:
            settings = RoutingSettings(**settings_kw)
        elif settings_kw:
            settings = dataclasses.replace(settings, **settings_kw)
        self.name = name
        self.kernel = kernel
        self.clock = clock
        self._settings = settings
        self.rib = Rib(ecmp=settings.ecmp, import_policy=settings.import_policy,
                       max_prefix=settings.max_prefix, max_prefix_action=settings.max_prefix_action,
                       protected=settings.protected, fail_closed=settings.fail_closed,
                       configured=settings.static_routes)
        self.limit_handlers: dict = {}          # tunnel -> LimitHandler (BGP session reset)
        #: ``fn(table, prefixes)`` after the selection of ``prefixes`` changed (in
        #: ``rib.selected`` now: carried by a tunnel; absent: by none) or the selected route
        #: was replaced (``rib.learned_path(p)`` may differ): the LAN side's feed
        self.listeners: list = []
        self._threaded = threaded and kernel is not None
        self._worker: KernelWorker | None = None   # the shared worker once this table used it
        self._worker_of = kernel_worker or KERNEL_WORKER
        self._task: asyncio.Task | None = None
        self._started = False
        self.kernel_errors = 0
        self.maintenance_errors = 0

    @property
    def settings(self) -> RoutingSettings:
        """What this table runs with (equal to what it was given, after a reconfigure too)."""
        return self._settings

    @property
    def import_policy(self) -> ImportPolicy:
        return self.rib.import_policy

    # ------------------------------------------------------------ life cycle
    def start(self, *, maintenance: bool = True) -> None:
        """Begin: the kernel worker, the configured prefixes' fail-closed routes, and (in a
        running event loop) the maintenance task, unless ``maintenance=False`` (a supervisor
        runs :meth:`maintain` instead). Idempotent."""
        if self._started:
            return
        self._started = True
        self._submit(RibChanges(guard_add=set(self.rib.guarded)))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and maintenance:
            self._task = loop.create_task(self.maintain(), name=f"cgwd-routing-{self.name}")

    async def stop(self) -> None:
        """End: the maintenance task, every route this table installed (fail-closed routes
        included), the kernel worker."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        self.clear()
        await asyncio.get_running_loop().run_in_executor(None, self.flush)
        self.close()
        self._started = False

    def reconfigure(self, settings: RoutingSettings) -> list[str]:
        """Apply new settings in place (import policy, ECMP, max-prefix, fail closed, ...):
        best paths, kernel routes and fail-closed routes are recomputed at once. Returns the
        names of the settings that changed."""
        old = self._settings
        changed = [f.name for f in dataclasses.fields(RoutingSettings)
                   if getattr(old, f.name) != getattr(settings, f.name)]
        if not changed:
            return []
        self._settings = settings
        ch, resets = self.rib.reconfigure(
            ecmp=settings.ecmp, import_policy=settings.import_policy, max_prefix=settings.max_prefix,
            max_prefix_action=settings.max_prefix_action, protected=settings.protected,
            fail_closed=settings.fail_closed, configured=settings.static_routes)
        self._submit(ch)
        for name in resets:
            self._limit_exceeded(name)
        log.info("routing %s: reconfigured in place: %s", self.name, ", ".join(changed))
        return changed

    # ------------------------------------------------------------ kernel plumbing
    def _submit(self, ch: RibChanges) -> None:
        if (ch or ch.updated) and self.listeners:
            prefixes = ch.selection_touched()
            for fn in list(self.listeners):
                try:
                    fn(self, prefixes)
                except Exception:  # noqa: BLE001 - a listener's trouble must not stop routing
                    log.exception("routing %s: selection listener failed", self.name)
        if self.kernel is None or not ch:
            return
        if not self._threaded:
            self.kernel.apply(ch)
            return
        self._ensure_worker()
        self._worker.put(self, "apply", ch)

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = self._worker_of
            self._worker.acquire()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the kernel worker has applied everything queued so far."""
        if not self._threaded or self._worker is None:
            return True
        return self._worker.barrier(self, timeout)

    # ------------------------------------------------------------ what the daemon reports
    def tunnel_up(self, tunnel_name: str, ifname: str, gateway: str, index: int | None = None) -> None:
        self._submit(self.rib.tunnel_up(tunnel_name, ifname, gateway, index))

    def tunnel_down(self, tunnel_name: str) -> None:
        self._submit(self.rib.tunnel_down(tunnel_name))

    # ------------------------------------------------------------ what route sources offer
    def routes_received(self, tunnel_name: str, announced, withdrawn) -> str | None:
        """Learned routes (import policy and max-prefix apply)."""
        ch, action = self.rib.update(tunnel_name, announced, withdrawn)
        self._submit(ch)
        if action == "reset":
            self._limit_exceeded(tunnel_name)
        return action

    def offer(self, tunnel_name: str, routes) -> None:
        """Configured routes: the tunnel now offers exactly ``routes``."""
        self._submit(self.rib.offer(tunnel_name, routes))

    def session_down(self, tunnel_name: str, graceful: bool, restart_time: float = 120) -> None:
        self._submit(self.rib.session_down(tunnel_name, graceful, restart_time, self.clock()))

    def end_of_rib(self, tunnel_name: str, family: int | None = None) -> None:
        """End-of-RIB from the tunnel's route source: its stale routes of ``family`` (4 or 6;
        None: every family) that were not refreshed go."""
        self._submit(self.rib.end_of_rib(tunnel_name, family))

    def expire_stale(self) -> None:
        self._submit(self.rib.expire_stale(self.clock()))

    def _limit_exceeded(self, tunnel_name: str) -> None:
        h = self.limit_handlers.get(tunnel_name)
        if h is not None:
            h.limit_exceeded(self.rib.max_prefix or 0)

    # ------------------------------------------------------------ views
    def routes(self) -> list[dict]:
        inst = dict(self.kernel.installed) if self.kernel is not None else {}
        out = self.rib.routes()
        for r in out:
            nhs = inst.get(r["prefix"], ())
            r["installed"] = any(nh.tunnel == r["tunnel"] for nh in nhs)
        return out

    def status(self) -> dict:
        s = self._settings
        k = self.kernel
        return {
            "routing": s.routing,
            "ecmp": s.ecmp, "import_policy": s.import_policy.to_config(), "max_prefix": s.max_prefix,
            "max_prefix_action": s.max_prefix_action, "fail_closed": s.fail_closed,
            "static_routes": list(s.static_routes),
            **({"static_primary": s.static_primary, "static_hold_down": s.static_hold_down,
                "health_check": s.health_check} if s.routing == "static" else {}),
            "carriers": self._carriers() if s.routing == "static" else {},
            "guarded": len(self.rib.guarded),
            # prefixes no tunnel carries now: unreachable (fail closed), not sent in cleartext
            "unreachable": self.rib.unreachable() if s.fail_closed else [],
            "refused": {n: self.rib.counts(n)["refused"] for n in self.rib.tunnels},
            "kernel_errors": self.kernel_errors, "maintenance_errors": self.maintenance_errors,
            "conflicts": dict(k.conflicts) if k is not None else {},
            "failed": dict(k.failed) if k is not None else {},
        }

    def _carriers(self) -> dict:
        """Configured prefix -> the tunnels carrying it now ([]: none, unreachable)."""
        return {p: [nh.tunnel for nh in self.rib.selected.get(p, ())] for p in self._settings.static_routes}

    # ------------------------------------------------------------ maintenance
    def reconcile(self) -> None:
        """Re-sync the kernel with the RIB selection and the fail-closed routes (periodic
        and after interface events)."""
        self.expire_stale()
        if self.kernel is None:
            return
        args = (dict(self.rib.selected), set(self.rib.guarded))
        if self._threaded:
            self._ensure_worker()
            self._worker.put(self, "reconcile", args)
        else:
            self.kernel.reconcile(*args)

    def inherit_guards(self, prefixes) -> None:
        """Guard what a crashed run guarded (see Rib.inherit_guards); before start() or after."""
        ch = self.rib.inherit_guards(prefixes)
        if self._started:
            self._submit(ch)

    def startup_cleanup(self, protocol: int | None = None) -> None:
        """Remove routes a previous (crashed) cgwd left in the kernel (our protocol id)."""
        if self.kernel is None:
            return
        if self._threaded:
            self._ensure_worker()
            self._worker.put(self, "flush_stale", protocol)
        else:
            self.kernel.flush_stale(protocol)

    def clear(self) -> None:
        """Remove every route we installed, fail-closed routes included (shutdown)."""
        for name in list(self.rib.tunnels):
            self._submit(self.rib.tunnel_down(name))
        if self.kernel is not None:
            if self._threaded:
                self._ensure_worker()
                self._worker.put(self, "remove_all", None)
            else:
                self.kernel.remove_all()

    def close(self) -> None:
        """Wait (30 s at most) for this table's queued kernel work, then let the shared
        worker go (it stops with its last table)."""
        if self._worker is not None:
            self._worker.barrier(self, 30)
            self._worker.release()
            self._worker = None

    async def maintain(self, interval: float | None = None) -> None:
        """Stale expiry and kernel reconciliation, every ``reconcile_interval`` seconds or
        when a graceful-restart deadline is due; an error is logged, the next round runs."""
        while True:
            every = interval if interval is not None else self._settings.reconcile_interval
            t = self.rib.get_timer()
            now = self.clock()
            # on the grid of the interval: every VPN's table reconciles in the same round and
            # shares one scan of the kernel table (KernelRoutes._dump_raw)
            delay = every - now % every
            delay = delay if t is None else max(0.0, min(delay, t - now))
            await asyncio.sleep(delay)
            try:
                self.reconcile()
            except Exception:
                self.maintenance_errors += 1
                log.exception("routing %s: maintenance round failed", self.name)
