"""``cgwctl status`` text for the LAN side: each router, its state, what it sent (accepted and
refused by the import filter) and what it was sent; what each tunnel passes on to AWS and
what the gateway's limit holds back."""
from __future__ import annotations

SHOW = 8   # prefixes listed per line before "... (N more)"


def _some(prefixes) -> str:
    ps = list(prefixes)
    if not ps:
        return "none"
    more = f" ... ({len(ps) - SHOW} more)" if len(ps) > SHOW else ""
    return ", ".join(ps[:SHOW]) + more


def format_lan(lan: dict, now: float) -> list[str]:
    """``now``: the status's own time (Unix seconds), for how long a session is up."""
    neighbors = lan.get("neighbors") or []
    if not neighbors:
        return []
    out = ["", f"LAN neighbors ({len(neighbors)}):"]
    for n in neighbors:
        kind = "iBGP" if n.get("ibgp") else "eBGP"
        up = n.get("uptime_since")
        since = f" for {int(now - up)}s" if up and n.get("state") == "established" else ""
        md5 = ", MD5" if n.get("md5") else ""
        if n.get("as_path"):
            md5 += f", as_path {n['as_path']}"      # the VPC prefixes: AWS's path, or originated
        if n.get("prepend"):
            md5 += f", prepend {n['prepend']}"     # what our announcements carry
        if n.get("med") is not None:
            md5 += f", MED {n['med']}"
        out.append(f"  {n.get('name')}: {n.get('address')} AS{n.get('remote_asn')} ({kind} from "
                   f"{n.get('local_address')} AS{n.get('local_asn')}{md5}): {str(n.get('state', '-')).capitalize()}{since}")
        out += format_bfd(n.get("bfd") or {})
        if n.get("last_error") and n.get("state") != "established":
            out.append(f"    last error: {n['last_error']}")
        received, refused = n.get("received") or [], n.get("refused") or {}
        out.append(f"    sent us {len(received) + len(refused)}: accepted {len(received)}: {_some(received)}")
        if refused:
            out.append(f"    refused {len(refused)}: " + _some(f"{p} ({why})" for p, why in refused.items()))
        sent = n.get("sent") or []
        hop = " ".join(n.get("next_hop") or [str(n.get("local_address"))])
        out.append(f"    we sent {len(sent)} (next hop {hop}): {_some(sent)}")
        looped = n.get("looped") or []
        if looped:
            out.append(f"    ! {len(looped)} carry AS{n.get('remote_asn')} in their AS path (from AWS): the router "
                       f"drops them as loops (as_path = \"originate\" sends them as ours): {_some(looped)}")
    for tunnel, p in (lan.get("to_aws") or {}).items():
        if not p.get("sent") and not p.get("held"):
            continue
        out.append(f"  to AWS on {tunnel}: {len(p.get('sent') or [])} LAN prefixes: {_some(p.get('sent') or [])}")
        if p.get("held"):
            out.append(f"    ! {len(p['held'])} held back over the gateway's limit (room {p.get('room')}): "
                       f"{_some(p['held'])}")
    return out


def _ms(v) -> str:
    return "-" if v is None else f"{v:g} ms"


def format_bfd(b: dict) -> list[str]:
    """The BFD line of one LAN neighbor (nothing when BFD is off)."""
    if not b.get("enabled"):
        return []
    state = {"admindown": "AdminDown"}.get(b.get("state"), str(b.get("state", "-")).capitalize())
    line = (f"    BFD {state} (remote {b.get('remote_state', '-')}): discriminators {b.get('local_discriminator', '-')}"
            f"/{b.get('remote_discriminator', '-')}, tx {_ms(b.get('tx_interval_ms'))}, detection "
            f"{_ms(b.get('detection_time_ms'))} (configured {b.get('interval_ms')} ms x {b.get('multiplier')}), "
            f"ups {b.get('ups', 0)}, downs {b.get('downs', 0)}")
    out = [line]
    extra = []
    if b.get("last_down_diag"):
        extra.append(f"last down: {b['last_down_diag']}")
    if b.get("drops"):
        extra.append("drops " + ", ".join(f"{k}={v}" for k, v in b["drops"].items()))
    if b.get("bgp_gated"):
        extra.append("BGP held down until BFD is Up (at most the hold time)")
    if b.get("gate_expiries"):
        extra.append(f"BGP let up without BFD {b['gate_expiries']}x (BFD down past the hold time)")
    if b.get("error"):
        extra.append(f"error: {b['error']}")
    if extra:
        out.append("      " + "; ".join(extra))
    return out
