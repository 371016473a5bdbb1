"""Render the daemon's status dict as one readable screen (``cgwctl status``).

In the spirit of ``show ipsec sa`` + ``show status bgp neighbor``, and saying plainly
what is missing ("IKE up but no IPsec SA: check ESP proposals/PFS").  Every key is read
with ``.get`` so a partial status (daemon starting, older daemon) still renders.
"""

from __future__ import annotations

import time
from typing import Any

from .lan.format import format_lan

__all__ = ["format_status", "hints_for_tunnel", "format_duration"]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    neg = s < 0
    s = abs(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        out = f"{d}d{h:02d}h{m:02d}m"
    elif h:
        out = f"{h}h{m:02d}m{s:02d}s"
    elif m:
        out = f"{m}m{s:02d}s"
    else:
        out = f"{s}s"
    return "-" + out if neg else out


def _num(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    n = int(n)
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div * 10:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _since(now: float, t: Any) -> str:
    return format_duration(now - t) if isinstance(t, (int, float)) else "-"


def _until(now: float, t: Any) -> str:
    return "in " + format_duration(t - now) if isinstance(t, (int, float)) else "-"


def _ike_up(t: dict) -> bool:
    return (t.get("ike") or {}).get("state") == "established"


def _sa_up(t: dict) -> bool:
    ip = t.get("ipsec") or {}
    return ip.get("state") == "installed" and bool(ip.get("sas", [True]))


def _bgp_up(t: dict) -> bool:
    """The tunnel's route source is up: BGP established, or (routing = "static") its static
    routes offered."""
    if "static" in t:
        return (t.get("static") or {}).get("state") in ("up", "hold-down")
    return (t.get("bgp") or {}).get("state") == "established"


def tunnel_up(t: dict) -> bool:
    return _ike_up(t) and _sa_up(t) and _bgp_up(t)


def hints_for_tunnel(t: dict, now: float | None = None) -> list[str]:
    """What is missing for this tunnel, in plain words (empty when all is well)."""
    now = time.time() if now is None else now
    if not t.get("enabled", True):
        return ["disabled in the configuration (enabled = false) or by `cgwctl down`"]
    hints: list[str] = []
    ike = t.get("ike") or {}
    bgp = t.get("bgp") or {}
    ipsec = t.get("ipsec") or {}
    remote = (t.get("outside") or {}).get("remote", "the AWS endpoint")
    err = ike.get("last_error")
    if not _ike_up(t):
        msg = f"IKE not established: no answer from {remote} — check UDP 500/4500 reachability and the PSK"
        if err:
            msg = f"IKE not established ({err}) — check the PSK, proposals and UDP 500/4500 to {remote}"
        hints.append(msg)
        st = t.get("static") or {}
        if st.get("reason") and st.get("reason") != "not started":
            hints.append(f"static routes not carried: {st['reason']}")  # e.g. why IKE is down (health check)
        return hints
    if not _sa_up(t):
        hints.append("IKE up but no IPsec SA: check ESP proposals/PFS (esp_proposals must match the tunnel options in AWS)")
        return hints
    for sa in ipsec.get("sas") or []:
        est = sa.get("established_at")
        if sa.get("packets_out", 0) > 0 and sa.get("packets_in", 0) == 0 and isinstance(est, (int, float)) and now - est > 30:
            hints.append("ESP packets sent but none received: check the AWS side (tunnel options) and UDP 4500/ESP on the path")
            break
    for sa in ipsec.get("sas") or []:
        if sa.get("auth_failures", 0) > 0:
            hints.append(f"{sa['auth_failures']} ESP packets failed authentication (SPI {sa.get('spi_in', '?')}): keys out of sync — try `cgwctl rekey {t.get('name', '')}`")
            break
    clamp = ipsec.get("mss_clamp")
    if isinstance(clamp, str) and clamp.startswith("off:") and "mss = 0" not in clamp:
        hints.append(f"TCP MSS clamping is {clamp}: large TCP segments depend on ICMP reaching the sender")
    if "static" in t:
        st = t.get("static") or {}
        if not _bgp_up(t):
            hints.append(f"static routes not carried: {st.get('reason', st.get('state', '?'))}")
        return hints
    if not _bgp_up(t):
        state = bgp.get("state", "idle")
        msg = f"IPsec up but BGP {state}: check that {bgp.get('peer', 'the AWS inside address')} answers on TCP 179 through the tunnel and the ASNs (local {bgp.get('local_asn', '?')}, AWS {bgp.get('remote_asn', '?')})"
        if bgp.get("last_error"):
            msg += f"; last error: {bgp['last_error']}"
        hints.append(msg)
        return hints
    if not bgp.get("prefixes_received"):
        hints.append("BGP established, 0 prefixes received: check route propagation on the VPC route table / VGW")
    if bgp.get("prefixes_advertised") == 0:
        hints.append("BGP established, 0 prefixes advertised: set advertise = [...] (on-prem prefixes) in the config")
    return hints


def _line(label: str, value: str) -> str:
    return f"    {label:<11} {value}"


def _format_tunnel(t: dict, now: float) -> list[str]:
    out: list[str] = []
    name = t.get("name", "?")
    up = tunnel_up(t)
    state = "UP" if up else ("DISABLED" if not t.get("enabled", True) else "DOWN")
    out.append(f"Tunnel {name} ({t.get('ifname', '-')}) of {t.get('vpn', '-')}: {state}")
    o = t.get("outside") or {}
    nat = o.get("nat") or {}
    natbits = []
    if nat.get("local_behind_nat"):
        natbits.append("we are behind NAT")
    if nat.get("peer_behind_nat"):
        natbits.append("peer behind NAT")
    if nat.get("udp_encap"):
        natbits.append("UDP-encapsulated (4500)")
    pub = o.get("public")
    addr = f"{o.get('local', '-')}" + (f" (public {pub})" if pub and pub != o.get("local") else "") + f" -> {o.get('remote', '-')}"
    out.append(_line("outside", addr + (f"; NAT: {', '.join(natbits)}" if natbits else "; no NAT")))

    ike = t.get("ike") or {}
    ike_s = ike.get("state", "idle")
    ike_label = f"IKEv{ike['version']}" if ike.get("version") else "IKE"
    if ike_s == "established":
        out.append(_line(ike_label, f"established {ike.get('algorithms', '-')}, up {_since(now, ike.get('established_at'))}, rekey {_until(now, ike.get('rekey_at'))}"))
    else:
        what = "waiting for AWS to initiate (startup action start)" if ike_s == "waiting" else ike_s
        out.append(_line(ike_label, what + (f" (last error: {ike['last_error']})" if ike.get("last_error") else "")))
    ike_drops = {k.removeprefix("drop_"): v for k, v in (ike.get("counters") or {}).items()
                 if k.startswith("drop_") and isinstance(v, int) and v}
    if ike_drops:
        out.append(_line("IKE drops", ", ".join(f"{k} {v}" for k, v in sorted(ike_drops.items()))))

    ipsec = t.get("ipsec") or {}
    sas = ipsec.get("sas") or []
    if ipsec.get("state") == "installed" and sas:
        for sa in sas:
            encap = " UDP-encap" if sa.get("udp_encap") else ""
            role = ""
            if sa.get("state") == "rekeyed":
                role = " [rekeyed: receive only]" if sa.get("outbound") is False else " [rekeyed]"
            elif sa.get("outbound") is False:  # None: the data path does not say (kernel)
                role = " [receive only]"
            out.append(_line("ESP SA", f"in {sa.get('spi_in', '-')} / out {sa.get('spi_out', '-')} {sa.get('algorithms', '-')}{encap}{role}, up {_since(now, sa.get('established_at'))}, rekey {_until(now, sa.get('rekey_at'))}, expires {_until(now, sa.get('expires_at'))}"))
            out.append(_line("", f"in {_num(sa.get('packets_in'))} pkts {_bytes(sa.get('bytes_in'))}, out {_num(sa.get('packets_out'))} pkts {_bytes(sa.get('bytes_out'))}, replay drops {sa.get('replay_drops', 0)}, auth failures {sa.get('auth_failures', 0)}"))
    else:
        out.append(_line("ESP SA", "none"))
    drops = ipsec.get("drops") or {}
    if drops:
        out.append(_line("drops", ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))))

    dpd = t.get("dpd") or {}
    if dpd:
        seen = dpd.get("last_seen")
        out.append(_line("DPD", f"every {dpd.get('interval', '-')}s, {dpd.get('retries', '-')} retries; peer last heard {_since(now, seen) + ' ago' if seen else 'never'}; outstanding {dpd.get('outstanding', 0)}"))

    bgp = t.get("bgp") or {}
    bs = bgp.get("state", "idle")
    peer = f"{bgp.get('local', '-')} AS{bgp.get('local_asn', '?')} -> {bgp.get('peer', '-')} AS{bgp.get('remote_asn', '?')}"
    if "static" in t:
        st = t.get("static") or {}
        hc = st.get("health_check")
        check = "; no health check"
        if hc:
            last = f"last reply {_since(now, hc['last_reply'])} ago" if hc.get("last_reply") else "no reply yet"
            rtt = f" (rtt {hc['rtt'] * 1000:.1f} ms)" if isinstance(hc.get("rtt"), (int, float)) else ""
            check = f"; health check every {hc.get('interval')}s, {last}{rtt}"
        held = ""
        if st.get("state") == "hold-down" and isinstance(st.get("hold_down_until"), (int, float)):
            held = f", {format_duration(max(0.0, st['hold_down_until'] - now))} left"
        out.append(_line("routing", f"static, {st.get('state', '?')}: {st.get('reason', '-')}{held}{check}"))
        out.append(_line("BGP", "disabled (routing = \"static\")"))
        for h in hints_for_tunnel(t, now):
            out.append(_line("!", h))
        return out
    if bs == "established":
        out.append(_line("BGP", f"Established, up {_since(now, bgp.get('uptime_since'))}, {peer}"))
    else:
        out.append(_line("BGP", f"{bs.capitalize()}, {peer}" + (f" (last error: {bgp['last_error']})" if bgp.get("last_error") else "")))
    if bgp.get("limit_resets"):
        wait = (f"restart in {format_duration(bgp['restart_in'])} (delay {format_duration(bgp.get('restart_delay'))})"
                if bgp.get("restart_in") is not None else ("stays down until restarted" if bgp.get("held_down") else "restarted"))
        out.append(_line("", f"max-prefix teardowns {bgp['limit_resets']}: {wait}"))
    fams = bgp.get("families") or ["ipv4/unicast"]
    carries = "" if fams == ["ipv4/unicast"] else f"{', '.join(f.replace('ipv', 'IPv').replace('/', ' ') for f in fams)}; "
    out.append(_line("", f"{carries}hold {bgp.get('hold_time', '-')}s keepalive {bgp.get('keepalive', '-')}s; prefixes received {bgp.get('prefixes_received', 0)}, advertised {bgp.get('prefixes_advertised', 0)}; messages in {_msg_count(bgp.get('messages_in'))} out {_msg_count(bgp.get('messages_out'))}"))
    for h in hints_for_tunnel(t, now):
        out.append(_line("!", h))
    return out


def format_status(status: dict, now: float | None = None) -> str:
    """The whole screen, ending with a newline."""
    now = status.get("now") or (time.time() if now is None else now)
    lines: list[str] = []
    dp = status.get("datapath") or {}
    head = f"cgwd {status.get('version', '?')} (pid {status.get('pid', '?')}), up {_since(now, status.get('started_at'))}"
    if dp:
        head += f"; data path {dp.get('kind', '?')}"
        if dp.get("requested") and dp.get("requested") != dp.get("kind"):
            head += f" (requested {dp['requested']}"
            head += f": {dp['reason']})" if dp.get("reason") else ")"
        elif dp.get("reason"):
            head += f" ({dp['reason']})"
    lines.append(head)
    tunnels = status.get("tunnels") or []
    if not tunnels:
        lines.append("")
        lines.append("No tunnels configured: add [[vpn]] connections (cgwctl import aws ...) and reload.")
    for t in tunnels:
        lines.append("")
        lines.extend(_format_tunnel(t, now))

    # redundancy, per VPN connection
    by_vpn: dict[str, list[dict]] = {}
    for t in tunnels:
        by_vpn.setdefault(t.get("vpn", "-"), []).append(t)
    summary = []
    for vpn, ts in by_vpn.items():
        enabled = [t for t in ts if t.get("enabled", True)]
        up = [t for t in enabled if tunnel_up(t)]
        if not enabled:
            continue
        if len(up) == 0:
            summary.append(f"{vpn}: no tunnel up — the VPN connection is down")
        elif len(up) < len(ts):
            summary.append(f"{vpn}: only {len(up)} of {len(ts)} tunnels up: no redundancy")
        else:
            summary.append(f"{vpn}: {len(up)} of {len(ts)} tunnels up")

    routes = status.get("routes") or []
    lines.append("")
    if routes:
        lines.append(f"Learned routes ({len(routes)}):")
        # columns as wide as the longest IPv6 prefix or next hop shown (IPv4: the usual widths)
        wp = max([20] + [len(str(r.get("prefix", "-"))) for r in routes])
        wn = max([16] + [len(str(r.get("nexthop", "-"))) for r in routes])
        lines.append(f"  {'prefix':<{wp}} {'tunnel':<12} {'next hop':<{wn}} {'AS path':<16} {'MED':<6} state")
        for r in routes:
            asp = " ".join(str(a) for a in r.get("as_path") or []) or "-"
            med = r.get("med")
            lines.append(f"  {str(r.get('prefix', '-')):<{wp}} {str(r.get('tunnel', '-')):<12} {str(r.get('nexthop', '-')):<{wn}} {asp:<16} {('-' if med is None else str(med)):<6} {_route_state(r)}")
        if any(r.get("best", True) and not r.get("installed") for r in routes):
            lines.append("  ! a best route is not in the kernel: see `journalctl -u cgwd`")
    else:
        lines.append("Learned routes: none")
    for v in status.get("vpns") or []:
        if "static" in v:
            lines.extend(_format_static_routes(v))
        for prefix, carriers in sorted((v.get("carriers") or {}).items()):
            if not carriers and "static" not in v:
                lines.append(f"  ! {v.get('name')}: {prefix}: no tunnel carries it"
                             + (" (unreachable: fail closed)" if v.get("fail_closed") else " (fail_closed = false)"))
        if v.get("unreachable") and v.get("routing") != "static":
            lines.append(f"  {v.get('name')}: unreachable while no tunnel carries them (fail closed): "
                         + ", ".join(v["unreachable"][:10]) + (" ..." if len(v["unreachable"]) > 10 else ""))
        refused = {n: r for n, r in (v.get("refused") or {}).items() if r}
        for n, r in sorted(refused.items()):
            lines.append(f"  {n}: refused " + ", ".join(f"{k.replace('_', ' ')} {c}" for k, c in sorted(r.items())))
    lines.extend(format_lan(status.get("lan") or {}, now))
    drops = status.get("drops") or {}
    if drops:
        lines.append("")
        lines.append("Drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    lines.extend(_format_reload_and_tasks(status, now))
    if summary:
        lines.append("")
        lines.extend(summary)
    return "\n".join(lines) + "\n"


def _format_static_routes(v: dict) -> list[str]:
    """A static VPN connection's routes: the tunnel carrying each, the ones standing by, and
    why none does."""
    how = [f"primary {v['static_primary']}" if v.get("static_primary") else "",
           "ECMP" if v.get("ecmp") else "", f"hold-down {v.get('static_hold_down', '-')}s",
           f"health check every {v['health_check']}s" if v.get("health_check") else "no health check"]
    out = ["", f"Static routes of {v.get('name', '-')} ({', '.join(h for h in how if h)}):"]
    for r in v.get("static") or []:
        if r.get("tunnels"):
            what = "via " + ", ".join(r["tunnels"]) + (f"; backup {', '.join(r['backups'])}" if r.get("backups") else "")
        else:
            closed = "unreachable (fail closed)" if v.get("fail_closed", True) else "NOT guarded (fail_closed = false)"
            what = f"! no tunnel carries it, {closed}: {r.get('reason') or '-'}"
        out.append(f"  {str(r.get('prefix', '-')):<20} {what}")
    return out


def _format_reload_and_tasks(status: dict, now: float) -> list[str]:
    out: list[str] = []
    system = status.get("system") or []
    if system:
        out += ["", "This box lacks:"]
        for f in system:
            out.append(f"  ! {f.get('what')}")
            out.append(f"    fix: {f.get('fix')}")
    rl = status.get("last_reload")
    if rl:
        what = rl.get("message") or ("ok" if rl.get("ok") else rl.get("error", "failed"))
        if not rl.get("ok") and rl.get("error"):
            what = rl["error"]
        out += ["", f"Last reload {_since(now, rl.get('at'))} ago: {what}"]
    crashed = {n: t for n, t in (status.get("tasks") or {}).items() if t.get("crashes")}
    for name, t in sorted(crashed.items()):
        out.append(f"  ! task {name} crashed {t['crashes']}x ({t.get('state')}): {t.get('last_error')}")
    return out


def _route_state(r: dict) -> str:
    """best+installed: "active"; a path BGP did not choose: "backup"; "stale" kept by graceful restart."""
    if r.get("stale"):
        return "stale (graceful restart)"
    if not r.get("best", True):
        return "backup"
    return "active" if r.get("installed") else "NOT IN KERNEL"


def _msg_count(v) -> str:
    """Message counters by type -> "12 (open 1, update 3, keepalive 8)"."""
    if not isinstance(v, dict):
        return str(v if v is not None else 0)
    parts = ", ".join(f"{k.replace('_', '-')} {n}" for k, n in v.items() if n)
    return f"{sum(n for n in v.values() if isinstance(n, int))}" + (f" ({parts})" if parts else "")
