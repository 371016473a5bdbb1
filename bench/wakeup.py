"""What one wake-up of an asyncio event loop costs, the floor under cgwd's ping RTT.

    .venv/bin/python bench/wakeup.py [--trips 3000]

cgwd's userspace data path handles each packet in a reader callback of the event loop
(``loop.add_reader``: the TUN for outbound, the ESP or UDP 4500 socket for inbound), so a
ping through an idle tunnel costs two wake-ups of the loop at the gateway (the request and
the reply), where strongSwan's libipsec has a thread blocked in ``read``/``recvfrom`` for
each. This script measures the difference on loopback, in one process per echo server:
a UDP client sends a datagram and waits for the echo, ``--trips`` times, against

* ``blocking``: a thread blocked in ``recvfrom`` that echoes (libipsec's way, in Python);
* ``asyncio``: ``loop.add_reader`` + non-blocking ``recvfrom`` until EAGAIN, then ``sendto``
  (cgwd's way);
* ``asyncio+timers``: the same with 200 timers pending far ahead and a 1 s periodic tick,
  as a daemon with 50 tunnels has (the loop's heap to look at on every wake-up).

Prints the median and 90th percentile round trip in microseconds and the extra cost of
the event loop per wake-up (median asyncio - median blocking; one wake-up per trip at the
echo server).  Run it alone on the machine; it needs no root.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time


def _blocking_server(port_q) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port_q.put(s.getsockname()[1])
    while True:
        data, addr = s.recvfrom(65535)
        if data == b"stop":
            return
        s.sendto(data, addr)


def _asyncio_server(port_q, timers: bool) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    loop = asyncio.new_event_loop()
    done = loop.create_future()

    def readable() -> None:
        for _ in range(64):
            try:
                data, addr = s.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            if data == b"stop":
                if not done.done():
                    done.set_result(None)
                return
            s.sendto(data, addr)

    def tick() -> None:
        loop.call_later(1.0, tick)

    if timers:
        for i in range(200):
            loop.call_later(3600 + i, lambda: None)
        loop.call_later(1.0, tick)
    loop.add_reader(s.fileno(), readable)
    port_q.put(s.getsockname()[1])
    loop.run_until_complete(done)


def measure(kind: str, trips: int) -> list[float]:
    q = multiprocessing.Queue()
    target, args = ((_blocking_server, (q,)) if kind == "blocking"
                    else (_asyncio_server, (q, kind == "asyncio+timers")))
    p = multiprocessing.Process(target=target, args=args, daemon=True)
    p.start()
    port = q.get(timeout=10)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(2)
    payload = os.urandom(84)
    rtts = []
    for i in range(trips + 200):
        t0 = time.perf_counter()
        c.sendto(payload, ("127.0.0.1", port))
        c.recvfrom(65535)
        if i >= 200:  # warm-up
            rtts.append((time.perf_counter() - t0) * 1e6)
        if i % 50 == 0:
            time.sleep(0.001)  # let the server block again, as between pings
    c.sendto(b"stop", ("127.0.0.1", port))
    p.join(5)
    return rtts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trips", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(f"# load {os.getloadavg()[0]:.2f}, {a.trips} round trips x {a.rounds} rounds per server, loopback UDP, 84 B")
    res: dict[str, list[float]] = {}
    for _ in range(a.rounds):
        for kind in ("blocking", "asyncio", "asyncio+timers"):
            res.setdefault(kind, []).append(statistics.median(r := measure(kind, a.trips)))
            res.setdefault(kind + " p90", []).append(statistics.quantiles(r, n=10)[-1])
    for kind in ("blocking", "asyncio", "asyncio+timers"):
        print(f"{kind:16s} median {statistics.median(res[kind]):7.1f} us   p90 {statistics.median(res[kind + ' p90']):7.1f} us")
    base = statistics.median(res["blocking"])
    for kind in ("asyncio", "asyncio+timers"):
        print(f"event loop cost per wake-up ({kind}): {statistics.median(res[kind]) - base:+.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
