"""RoutingTable: N BGP sessions (one per tunnel) -> RIB -> kernel routes.

The daemon constructs one ``RoutingTable`` and, per tunnel, passes
``routing.event_handler(tunnel_name, session)`` as the ``on_event`` of the tunnel's
:class:`~cgwd.bgp.speaker.BgpSpeaker`; it calls ``tunnel_up``/``tunnel_down`` when the
IPsec tunnel (its interface and inside addresses) comes and goes.

Kernel work (netlink) runs in one worker thread so that installing thousands of routes
never blocks the event loop (keepalives must keep flowing); ``flush()`` waits for it.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from . import session as s
from .policy import ImportPolicy
from .rib import Rib, RibChanges

log = logging.getLogger("cgwd.bgp.routing")


class RoutingTable:
    def __init__(self, kernel=None, ecmp: bool = False, import_policy=None,
                 max_prefix: int | None = 1000, max_prefix_action: str = "warn", *,
                 own_prefixes=(), clock=time.monotonic, threaded: bool = True):
        self.kernel = kernel
        self.clock = clock
        self.import_policy = ImportPolicy.from_config(import_policy, own_prefixes)
        self.rib = Rib(ecmp=ecmp, import_policy=self.import_policy, max_prefix=max_prefix,
                       max_prefix_action=max_prefix_action)
        self.sessions: dict[str, s.BgpSession] = {}
        self._threaded = threaded and kernel is not None
        self._q: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._busy = threading.Event()
        self.kernel_errors = 0

    # ------------------------------------------------------------ kernel plumbing
    def _submit(self, ch: RibChanges) -> None:
        if self.kernel is None or not ch:
            return
        if not self._threaded:
            self.kernel.apply(ch)
            return
        self._ensure_worker()
        self._q.put(("apply", ch))

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._q = queue.Queue()
            self._worker = threading.Thread(target=self._run_worker, name="cgwd-bgp-kernel",
                                            daemon=True)
            self._worker.start()

    def _run_worker(self) -> None:
        q = self._q
        while True:
            item = q.get()
            items = [item]
            while True:          # coalesce what is queued
                try:
                    items.append(q.get_nowait())
                except queue.Empty:
                    break
            pending = None
            stop = False
            for kind, arg in items:
                try:
                    if kind == "apply":
                        pending = arg if pending is None else pending.merge(arg)
                        continue
                    if pending is not None:
                        self.kernel.apply(pending)
                        pending = None
                    if kind == "reconcile":
                        self.kernel.reconcile(arg)
                    elif kind == "remove_all":
                        self.kernel.remove_all()
                    elif kind == "flush_stale":
                        self.kernel.flush_stale(arg)
                    elif kind == "stop":
                        stop = True
                except Exception:
                    self.kernel_errors += 1
                    log.exception("kernel route worker")
            if pending is not None:
                try:
                    self.kernel.apply(pending)
                except Exception:
                    self.kernel_errors += 1
                    log.exception("kernel route worker")
            for _ in items:
                q.task_done()
            if stop:
                return

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the kernel worker has applied everything queued so far."""
        if not self._threaded or self._q is None:
            return True
        done = threading.Event()
        self._q.put(("barrier", done))
        if timeout is None:
            self._q.join()
            return True
        end = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)
        return not self._q.unfinished_tasks

    async def aflush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.flush)

    # ------------------------------------------------------------ daemon API
    def tunnel_up(self, tunnel_name: str, ifname: str, gateway: str, index: int | None = None) -> None:
        self._submit(self.rib.tunnel_up(tunnel_name, ifname, gateway, index))

    def tunnel_down(self, tunnel_name: str) -> None:
        self._submit(self.rib.tunnel_down(tunnel_name))

    def routes_received(self, tunnel_name: str, announced, withdrawn) -> str | None:
        ch, action = self.rib.update(tunnel_name, announced, withdrawn)
        self._submit(ch)
        if action == "reset":
            sess = self.sessions.get(tunnel_name)
            if sess is not None:
                limit = self.rib.max_prefix or 0
                sess.reset(self.clock(), 6, 1, b"\x00\x01\x01" + limit.to_bytes(4, "big"),
                           reason=f"maximum prefix count {limit} exceeded")
        return action

    def session_down(self, tunnel_name: str, graceful: bool, restart_time: float = 120) -> None:
        self._submit(self.rib.session_down(tunnel_name, graceful, restart_time, self.clock()))

    def end_of_rib(self, tunnel_name: str) -> None:
        self._submit(self.rib.end_of_rib(tunnel_name))

    def expire_stale(self) -> None:
        self._submit(self.rib.expire_stale(self.clock()))

    def routes(self) -> list[dict]:
        inst = dict(self.kernel.installed) if self.kernel is not None else {}
        out = self.rib.routes()
        for r in out:
            nhs = inst.get(r["prefix"], ())
            r["installed"] = any(nh.tunnel == r["tunnel"] for nh in nhs)
        return out

    def reconcile(self) -> None:
        """Re-sync the kernel with the RIB selection (periodic and after interface events)."""
        self.expire_stale()
        if self.kernel is None:
            return
        desired = dict(self.rib.selected)
        if self._threaded:
            self._ensure_worker()
            self._q.put(("reconcile", desired))
        else:
            self.kernel.reconcile(desired)

    def startup_cleanup(self, protocol: int | None = None) -> None:
        """Remove routes a previous (crashed) cgwd left in the kernel (our protocol id)."""
        if self.kernel is None:
            return
        if self._threaded:
            self._ensure_worker()
            self._q.put(("flush_stale", protocol))
        else:
            self.kernel.flush_stale(protocol)

    def clear(self) -> None:
        """Remove every route we installed (daemon shutdown)."""
        for name in list(self.rib.tunnels):
            self._submit(self.rib.tunnel_down(name))
        if self.kernel is not None:
            if self._threaded:
                self._ensure_worker()
                self._q.put(("remove_all", None))
            else:
                self.kernel.remove_all()

    def close(self) -> None:
        if self._worker is not None:
            self._q.put(("stop", None))
            self._worker.join(timeout=30)
            self._worker = None

    # ------------------------------------------------------------ glue to sessions
    def handle_event(self, tunnel_name: str, ev) -> None:
        if isinstance(ev, s.RoutesReceived):
            self.routes_received(tunnel_name, ev.announced, ev.withdrawn)
        elif isinstance(ev, s.EndOfRib):
            self.end_of_rib(tunnel_name)
        elif isinstance(ev, s.SessionDown):
            self.session_down(tunnel_name, ev.graceful_restart, ev.restart_time)
        elif isinstance(ev, s.SessionUp):
            log.info("BGP on %s established (hold %s, keepalive %s)", tunnel_name,
                     ev.hold_time, ev.keepalive)

    def event_handler(self, tunnel_name: str, session: s.BgpSession | None = None, then=None):
        """An ``on_event`` for BgpSpeaker; ``then(ev)`` is called afterwards (daemon hook)."""
        if session is not None:
            self.sessions[tunnel_name] = session
        self.rib.add_tunnel(tunnel_name)

        def on_event(ev):
            self.handle_event(tunnel_name, ev)
            if then is not None:
                then(ev)
        return on_event

    async def maintain(self, interval: float = 30.0) -> None:
        """Periodic stale expiry and kernel reconciliation (run as a task)."""
        while True:
            t = self.rib.get_timer()
            delay = interval if t is None else max(0.0, min(interval, t - self.clock()))
            await asyncio.sleep(delay)
            self.reconcile()
