"""Prometheus text exposition (format 0.0.4) from the daemon's status dict.

``render_metrics(status)`` is pure; ``MetricsServer("127.0.0.1:9474", status_fn)`` serves
``GET /metrics`` only (bounded request, short timeouts).  Off unless
``daemon.metrics_listen`` is set.  Labels carry tunnel/VPN names, states and drop
reasons only — never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import re
from typing import Any, Awaitable, Callable

from .config import parse_listen

__all__ = ["render_metrics", "MetricsServer", "CONTENT_TYPE"]

log = logging.getLogger("cgwd.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
IKE_STATES = ("established", "connecting", "waiting", "idle", "down")
BGP_STATES = ("idle", "connect", "active", "opensent", "openconfirm", "established")
STATIC_STATES = ("down", "hold-down", "up", "silent")  # cgwd.routing.static.Carry
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.:/-]")


def _esc(v: Any) -> str:
    s = str(v)
    s = s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return s[:128]


def _metric_name_part(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", s).strip("_").lower() or "other"


class _Out:
    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, mtype: str, help_: str, labels: dict[str, Any], value: Any) -> None:
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            return
        fam = self.families.setdefault(name, (mtype, help_, []))
        lbl = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        fam[2].append(f"{name}{{{lbl}}} {_fmt(value)}" if lbl else f"{name} {_fmt(value)}")

    def text(self) -> str:
        out = []
        for name, (mtype, help_, samples) in self.families.items():
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {mtype}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def _fmt(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render_metrics(status: dict) -> str:
    o = _Out()
    o.add("cgwd_info", "gauge", "cgwd version and data path", {"version": status.get("version", ""), "datapath": (status.get("datapath") or {}).get("kind", "")}, 1)
    o.add("cgwd_start_time_seconds", "gauge", "Unix time cgwd started", {}, status.get("started_at"))
    tunnels = status.get("tunnels") or []
    for t in tunnels:
        L = {"tunnel": t.get("name", ""), "vpn": t.get("vpn", "")}
        ike = t.get("ike") or {}
        ipsec = t.get("ipsec") or {}
        bgp = t.get("bgp") or {}
        dpd = t.get("dpd") or {}
        sas = ipsec.get("sas") or []
        routed = (t["static"].get("state") in ("up", "hold-down")) if "static" in t else bgp.get("state") == "established"
        up = ike.get("state") == "established" and ipsec.get("state") == "installed" and routed
        o.add("cgwd_tunnel_enabled", "gauge", "1 if the tunnel is enabled", L, bool(t.get("enabled", True)))
        o.add("cgwd_tunnel_up", "gauge", "1 if IKE, IPsec and BGP are all up", L, up)
        o.add("cgwd_tunnel_nat_udp_encap", "gauge", "1 if ESP is UDP-encapsulated (NAT-T)", L, bool(((t.get("outside") or {}).get("nat") or {}).get("udp_encap")))
        if t.get("inner_family"):
            o.add("cgwd_tunnel_info", "gauge", "the tunnel's address families: inner (what it carries, BGP) and outer (IKE, ESP)",
                  {**L, "inner_family": f"ipv{t['inner_family']}", "outer_family": f"ipv{t.get('outer_family', 4)}"}, 1)
        st = ike.get("state", "idle")
        LV = {**L, "ike_version": ike.get("version", 1)}
        for s in IKE_STATES:
            o.add("cgwd_ike_state", "gauge", "IKE SA state (1 for the current state)", {**LV, "state": s}, st == s)
        o.add("cgwd_ike_established_timestamp_seconds", "gauge", "when the IKE SA was established", L, ike.get("established_at"))
        o.add("cgwd_ike_rekey_timestamp_seconds", "gauge", "when the IKE SA will be rekeyed", L, ike.get("rekey_at"))
        counters = ike.get("counters") or {}
        for k, v in sorted(counters.items()):
            o.add("cgwd_ike_events_total", "counter", "IKE events (rekeys, retransmits, failures...)", {**LV, "event": _metric_name_part(k)}, v)
        for sa_kind in ("ike", "ipsec"):
            o.add("cgwd_rekeys_total", "counter", "completed rekeys, by SA kind", {**L, "sa": sa_kind}, counters.get(f"rekeys_{sa_kind}", 0))
        o.add("cgwd_ipsec_sa_installed", "gauge", "number of installed ESP SA pairs", L, len(sas) if ipsec.get("state") == "installed" else 0)
        o.add("cgwd_ipsec_packets_total", "counter", "ESP packets (across rekeys where the data path keeps totals)", {**L, "direction": "in"}, ipsec.get("packets_in", sum(s.get("packets_in", 0) for s in sas)))
        o.add("cgwd_ipsec_packets_total", "counter", "ESP packets (across rekeys where the data path keeps totals)", {**L, "direction": "out"}, ipsec.get("packets_out", sum(s.get("packets_out", 0) for s in sas)))
        o.add("cgwd_ipsec_bytes_total", "counter", "ESP payload bytes (across rekeys where the data path keeps totals)", {**L, "direction": "in"}, ipsec.get("bytes_in", sum(s.get("bytes_in", 0) for s in sas)))
        o.add("cgwd_ipsec_bytes_total", "counter", "ESP payload bytes (across rekeys where the data path keeps totals)", {**L, "direction": "out"}, ipsec.get("bytes_out", sum(s.get("bytes_out", 0) for s in sas)))
        o.add("cgwd_ipsec_replay_drops_total", "counter", "ESP packets dropped by the replay window (current SAs)", L, sum(s.get("replay_drops", 0) for s in sas))
        o.add("cgwd_ipsec_auth_failures_total", "counter", "ESP packets failing integrity check (current SAs)", L, sum(s.get("auth_failures", 0) for s in sas))
        for s in sas:
            o.add("cgwd_ipsec_sa_expiry_timestamp_seconds", "gauge", "when the ESP SA expires", {**L, "spi_in": s.get("spi_in", "")}, s.get("expires_at"))
        drops: dict[str, int] = {}
        for d in [ipsec.get("drops") or {}] + [s.get("drops") or {} for s in sas]:
            for reason, n in d.items():
                if isinstance(n, (int, float)) and not isinstance(n, bool):
                    key = _metric_name_part(reason)
                    drops[key] = drops.get(key, 0) + n
        for reason, n in sorted(drops.items()):
            o.add("cgwd_tunnel_drops_total", "counter", "packets dropped on this tunnel by the data path, by reason (replay and integrity failures are counted apart)", {**L, "reason": reason}, n)
        o.add("cgwd_dpd_outstanding", "gauge", "DPD requests without answer", L, dpd.get("outstanding"))
        for kind in ("sent", "acked", "answered", "dead"):
            o.add("cgwd_dpd_total", "counter", "DPD: R-U-THERE sent, acknowledged, answered for the peer; peer declared dead", {**L, "event": kind}, counters.get(f"dpd_{kind}", 0))
        o.add("cgwd_dpd_last_seen_timestamp_seconds", "gauge", "last time the peer was heard from", L, dpd.get("last_seen"))
        if "static" in t:
            _static_tunnel_metrics(o, L, t["static"] or {})
            continue
        bs = bgp.get("state", "idle")
        for s in BGP_STATES:
            o.add("cgwd_bgp_state", "gauge", "BGP session state (1 for the current state)", {**L, "state": s}, bs == s)
        o.add("cgwd_bgp_established_timestamp_seconds", "gauge", "when the BGP session was established", L, bgp.get("uptime_since") if bs == "established" else None)
        o.add("cgwd_bgp_prefixes_received", "gauge", "prefixes received from AWS", L, bgp.get("prefixes_received"))
        o.add("cgwd_bgp_prefixes_advertised", "gauge", "prefixes advertised to AWS", L, bgp.get("prefixes_advertised"))
        for direction in ("in", "out"):
            msgs = bgp.get(f"messages_{direction}")
            # the session counts by message type ({"KEEPALIVE": n, ...}); older status: one number
            items = sorted(msgs.items()) if isinstance(msgs, dict) else ([("all", msgs)] if msgs is not None else [])
            for mtype, n in items:
                o.add("cgwd_bgp_messages_total", "counter", "BGP messages, by direction and type", {**L, "direction": direction, "type": _metric_name_part(str(mtype))}, n)
        o.add("cgwd_bgp_hold_time_seconds", "gauge", "negotiated BGP hold time", L, bgp.get("hold_time"))
        o.add("cgwd_bgp_max_prefix_resets_total", "counter", "BGP sessions torn down for too many prefixes (Cease/1)", L, bgp.get("limit_resets", 0))
        o.add("cgwd_bgp_restart_delay_seconds", "gauge", "delay of the pending automatic BGP restart (grows after max-prefix teardowns)", L, bgp.get("restart_delay"))
    routes = status.get("routes") or []
    per: dict[str, list[int]] = {t.get("name", ""): [0, 0, 0] for t in tunnels}
    for r in routes:
        c = per.setdefault(str(r.get("tunnel", "")), [0, 0, 0])
        c[0] += 1
        c[1] += bool(r.get("best"))
        c[2] += bool(r.get("installed"))
    for tun, (n, best, inst) in sorted(per.items()):
        o.add("cgwd_routes", "gauge", "learned paths (prefixes) through the tunnel, best or backup", {"tunnel": tun}, n)
        o.add("cgwd_routes_best", "gauge", "learned prefixes whose best path is through the tunnel", {"tunnel": tun}, best)
        o.add("cgwd_routes_installed", "gauge", "learned prefixes installed in the kernel through the tunnel", {"tunnel": tun}, inst)
    for v in status.get("vpns") or []:
        V = {"vpn": v.get("name", "")}
        o.add("cgwd_vpn_routing_info", "gauge", "routing mode of the VPN connection", {**V, "routing": v.get("routing", "bgp")}, 1)
        o.add("cgwd_vpn_unreachable_prefixes", "gauge", "prefixes no tunnel carries: unreachable (fail closed), not sent in cleartext", V, len(v.get("unreachable") or []))
        for r in v.get("static") or []:
            P = {**V, "prefix": r.get("prefix", "")}
            o.add("cgwd_static_route_carriers", "gauge", "tunnels carrying the static route now (0: unreachable, fail closed)", P, len(r.get("tunnels") or []))
            for tun in [t.get("name", "") for t in tunnels if t.get("vpn") == v.get("name")]:
                o.add("cgwd_static_route_carried", "gauge", "1 if the tunnel carries the static route now", {**P, "tunnel": tun}, tun in (r.get("tunnels") or []))
        for tun, reasons in sorted((v.get("refused") or {}).items()):
            for reason, n in sorted(reasons.items()):
                o.add("cgwd_routes_refused_total", "counter", "routes refused, by reason (import policy, covers an outside address, max prefix)", {"tunnel": tun, "reason": _metric_name_part(reason)}, n)
    _lan_metrics(o, status.get("lan") or {})
    for reason, n in sorted((status.get("drops") or {}).items()):
        o.add("cgwd_drops_total", "counter", "packets dropped outside a tunnel, by reason", {"reason": _metric_name_part(reason)}, n)
    proc = status.get("process") or {}
    o.add("cgwd_open_fds", "gauge", "open file descriptors of the cgwd process", {}, proc.get("open_fds"))
    o.add("cgwd_asyncio_tasks", "gauge", "asyncio tasks in the cgwd process", {}, proc.get("asyncio_tasks"))
    o.add("cgwd_resident_memory_bytes", "gauge", "resident memory of the cgwd process", {}, proc.get("rss_bytes"))
    for f in status.get("system") or []:
        o.add("cgwd_system_problem", "gauge", "1 for each thing the box lacks (see cgwctl status)", {"problem": f.get("name", "")}, 1)
    for name, t in sorted((status.get("tasks") or {}).items()):
        o.add("cgwd_task_crashes_total", "counter", "crashes of a supervised long-lived task", {"task": name}, t.get("crashes", 0))
        o.add("cgwd_task_running", "gauge", "1 if the supervised task is running", {"task": name}, t.get("state") == "running")
    return o.text()


def _lan_bfd_metrics(o: _Out, L: dict, b: dict) -> None:
    """BFD on a LAN session (cgwd.lan.bfd), when configured."""
    if not b.get("enabled"):
        return
    for s in ("admindown", "down", "init", "up"):
        o.add("cgwd_lan_bfd_state", "gauge", "LAN BFD session state (1 for the current state)", {**L, "state": s},
              b.get("state") == s)
    o.add("cgwd_lan_bfd_ups_total", "counter", "LAN BFD session transitions to Up", L, b.get("ups", 0))
    o.add("cgwd_lan_bfd_downs_total", "counter", "LAN BFD session transitions from Up to Down", L, b.get("downs", 0))
    o.add("cgwd_lan_bfd_bgp_teardowns_total", "counter", "LAN BGP sessions closed by BFD Down", L,
          b.get("bgp_teardowns", 0))
    o.add("cgwd_lan_bfd_gate_expiries_total", "counter",
          "LAN BGP sessions let up without BFD after the gate's limit (hold time)", L, b.get("gate_expiries", 0))
    det = b.get("detection_time_ms")
    if det is not None:
        o.add("cgwd_lan_bfd_detection_time_seconds", "gauge", "LAN BFD negotiated detection time", L, det / 1000)
    for reason, v in sorted((b.get("drops") or {}).items()):
        o.add("cgwd_lan_bfd_drops_total", "counter", "LAN BFD packets dropped, by reason", {**L, "reason": reason}, v)


def _lan_metrics(o: _Out, lan: dict) -> None:
    """LAN-side BGP (cgwd.lan): each router's session, what it gave and was given, and what
    the gateway's limit holds back."""
    for n in lan.get("neighbors") or []:
        L = {"neighbor": n.get("name", "")}
        st = n.get("state", "idle")
        for s in BGP_STATES:
            o.add("cgwd_lan_bgp_state", "gauge", "LAN BGP session state (1 for the current state)", {**L, "state": s}, st == s)
        o.add("cgwd_lan_prefixes_accepted", "gauge", "prefixes from the LAN router its import filter accepted", L, len(n.get("received") or []))
        o.add("cgwd_lan_prefixes_refused", "gauge", "prefixes from the LAN router its import filter refused", L, len(n.get("refused") or {}))
        o.add("cgwd_lan_prefixes_sent", "gauge", "VPC prefixes announced to the LAN router", L, len(n.get("sent") or []))
        _lan_bfd_metrics(o, L, n.get("bfd") or {})
    if not lan.get("neighbors"):
        return
    for tun, p in sorted((lan.get("to_aws") or {}).items()):
        o.add("cgwd_lan_prefixes_to_aws", "gauge", "LAN prefixes announced to AWS on the tunnel", {"tunnel": tun}, len(p.get("sent") or []))
        o.add("cgwd_lan_prefixes_held", "gauge", "LAN prefixes not announced to AWS: over the gateway's limit", {"tunnel": tun}, len(p.get("held") or []))
    o.add("cgwd_lan_prefixes_held_total", "counter", "LAN prefixes held back over the gateway's limit", {}, lan.get("held_total", 0))


def _static_tunnel_metrics(o: _Out, L: dict, st: dict) -> None:
    """A static tunnel: its routing state and health check; BGP as disabled (not down)."""
    o.add("cgwd_bgp_state", "gauge", "BGP session state (1 for the current state)", {**L, "state": "disabled"}, 1)
    state = st.get("state", "down")
    for s in STATIC_STATES:
        o.add("cgwd_static_state", "gauge", "static routing state of the tunnel (1 for the current state)", {**L, "state": s}, state == s)
    for k, n in sorted((st.get("counters") or {}).items()):
        o.add("cgwd_static_events_total", "counter", "static routing: health-check probes, replies, silences, hold-downs, downs", {**L, "event": _metric_name_part(k)}, n)
    hc = st.get("health_check") or {}
    o.add("cgwd_static_health_check_rtt_seconds", "gauge", "round-trip time of the last health-check reply", L, hc.get("rtt"))
    o.add("cgwd_static_health_check_last_reply_timestamp_seconds", "gauge", "when AWS's inside address last answered the health check", L, hc.get("last_reply"))


StatusFn = Callable[[], "dict | Awaitable[dict]"]


class MetricsServer:
    """Tiny HTTP/1.0 server: ``GET /metrics`` -> the exposition; anything else 404/405."""

    MAX_REQUEST = 8192
    TIMEOUT = 5.0

    def __init__(self, listen: str, status_fn: StatusFn):
        self.host, self.port = parse_listen(listen, allow_zero=True)
        self.status_fn = status_fn
        self._server: asyncio.AbstractServer | None = None

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=self.MAX_REQUEST)
        log.info("metrics on http://%s:%d/metrics", self.host, self.bound_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.TIMEOUT)
            except (asyncio.LimitOverrunError, ValueError):
                return await self._send(writer, 431, "request too large\n")
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3:
                return await self._send(writer, 400, "bad request\n")
            method, target = parts[0], parts[1].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                return await self._send(writer, 405, "only GET /metrics\n", extra="Allow: GET, HEAD\r\n")
            if target != b"/metrics":
                return await self._send(writer, 404, "not found: try /metrics\n")
            st = self.status_fn()
            if inspect.isawaitable(st):
                st = await st
            await self._send(writer, 200, render_metrics(st), ctype=CONTENT_TYPE, head=method == b"HEAD")
        except Exception:
            log.exception("metrics request failed")
            with contextlib.suppress(Exception):
                await self._send(writer, 500, "internal error\n")
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _send(self, writer, code: int, body: str, ctype: str = "text/plain; charset=utf-8", extra: str = "", head: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}[code]
        data = body.encode()
        hdr = f"HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
        writer.write(hdr.encode() + (b"" if head else data))
        await writer.drain()
