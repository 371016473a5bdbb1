"""The routing tables' one shared kernel worker: one thread for every VPN connection's table,
per-table order kept, merged bursts, barriers, and no thread left when the last table closes."""
import threading

from test_routing_rib import R
from cgwd.routing.table import KernelWorker, RoutingTable


class RecordingKernel:
    def __init__(self):
        self.calls = []
        self.thread_names = set()
        self.gate = threading.Event()
        self.gate.set()

    def _rec(self, what):
        self.gate.wait(10)
        self.thread_names.add(threading.current_thread().name)
        self.calls.append(what)

    def apply(self, ch):
        self._rec(("apply", tuple(sorted(ch.add)), tuple(sorted(ch.remove))))

    def reconcile(self, desired, guarded):
        self._rec(("reconcile", tuple(sorted(desired))))

    def remove_all(self):
        self._rec(("remove_all",))

    def flush_stale(self, protocol):
        self._rec(("flush_stale", protocol))


def _named():
    return [t for t in threading.enumerate() if t.name == "cgwd-routing-kernel"]


def test_one_worker_thread_for_all_tables_order_and_merge_kept():
    w = KernelWorker()
    before = len(_named())   # the process-wide worker, if other tests' tables still hold it
    kernels = [RecordingKernel() for _ in range(5)]
    tables = [RoutingTable(kernel=k, name=f"vpn{i}", fail_closed=False, import_policy="aws-default",
                           kernel_worker=w) for i, k in enumerate(kernels)]
    kernels[0].gate.clear()   # hold the worker inside table 0's first call: the others queue behind it
    for i, t in enumerate(tables):
        t.startup_cleanup(157)
        t.tunnel_up(f"t{i}", f"tun{i}", "169.254.10.1")
        for k in range(3):   # a burst: merged into one apply when queued together
            t.routes_received(f"t{i}", [R(f"10.{i}.{k}.0/24")], [])
        t.reconcile()
    assert len(_named()) == before + 1
    thread = w._thread
    kernels[0].gate.set()
    for t in tables:
        assert t.flush(10)
    for i, k in enumerate(kernels):
        assert k.thread_names == {"cgwd-routing-kernel"}
        assert k.calls[0] == ("flush_stale", 157)
        applies = [c for c in k.calls if c[0] == "apply"]
        added = sorted(p for c in applies for p in c[1])
        assert added == [f"10.{i}.{k2}.0/24" for k2 in range(3)], k.calls
        assert k.calls[-1] == ("reconcile", tuple(added))
        if i > 0:
            assert len(applies) == 1, k.calls   # queued while the worker was busy: one batch
    for t in tables[:-1]:
        t.close()
    assert w.running and thread.is_alive()
    tables[-1].close()
    assert not w.running and not thread.is_alive() and len(_named()) == before


def test_worker_restarts_for_a_table_made_after_the_last_closed():
    w = KernelWorker()
    k = RecordingKernel()
    t = RoutingTable(kernel=k, name="a", fail_closed=False, import_policy="aws-default", kernel_worker=w)
    t.tunnel_up("s1", "tun1", "169.254.10.1")
    t.routes_received("s1", [R("10.9.0.0/24")], [])
    assert t.flush(10)
    t.close()
    assert not w.running
    k2 = RecordingKernel()
    t2 = RoutingTable(kernel=k2, name="b", fail_closed=False, import_policy="aws-default", kernel_worker=w)
    t2.tunnel_up("s1", "tun1", "169.254.10.1")
    t2.routes_received("s1", [R("10.8.0.0/24")], [])
    assert t2.flush(10) and any(c[0] == "apply" for c in k2.calls)
    t2.close()
    assert not w.running
