"""IKEv2 identities (RFC 7296 3.5) and traffic-selector narrowing (2.9) for cgwd's tunnels."""

from __future__ import annotations

import ipaddress

from .codec import TrafficSelector
from .constants import IdType, TsType

_KINDS = {"ipv4": None, "ipv6": None, "fqdn": IdType.FQDN, "userfqdn": IdType.RFC822_ADDR,
          "user_fqdn": IdType.RFC822_ADDR, "email": IdType.RFC822_ADDR, "rfc822": IdType.RFC822_ADDR,
          "keyid": IdType.KEY_ID}


def parse_identity(text: str) -> tuple[int, bytes]:
    """"192.0.2.1", "ipv4:192.0.2.1", "ipv6:2001:db8::1", "fqdn:vpn.example.com",
    "vpn.example.com", "a@b" / "userfqdn:a@b", "keyid:abc" -> (ID type, identification data)."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty identity")
    kind, sep, val = text.partition(":")
    if not sep or kind.lower() not in _KINDS:
        kind, val = "", text
    kind = kind.lower()
    if kind in ("", "ipv4", "ipv6"):
        try:
            addr = ipaddress.ip_address(val)
        except ValueError:
            if kind:
                raise ValueError(f"identity {text!r}: not an {kind} address") from None
            return (IdType.RFC822_ADDR if "@" in val else IdType.FQDN), val.encode()
        if kind and (addr.version == 4) != (kind == "ipv4"):
            raise ValueError(f"identity {text!r}: not an {kind} address")
        return (IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR), addr.packed
    if not val:
        raise ValueError(f"identity {text!r}: empty {kind}")
    return _KINDS[kind], val.encode()


def describe_id(id_type: int, data: bytes) -> str:
    if id_type == IdType.IPV4_ADDR and len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    if id_type == IdType.IPV6_ADDR and len(data) == 16:
        return str(ipaddress.IPv6Address(data))
    if id_type in (IdType.FQDN, IdType.RFC822_ADDR, IdType.KEY_ID):
        prefix = {IdType.FQDN: "fqdn:", IdType.RFC822_ADDR: "userfqdn:", IdType.KEY_ID: "keyid:"}[IdType(id_type)]
        return prefix + data.decode("utf-8", "replace")[:128]
    return f"id-type-{id_type}:{data[:32].hex()}"


Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _intersect(ts: TrafficSelector, net: Net) -> Net | None:
    """The largest CIDR block inside both ``ts`` (all protocols and ports only) and ``net``."""
    if ts.ip_protocol != 0 or (ts.start_port, ts.end_port) != (0, 65535):
        return None
    if (ts.ts_type == TsType.IPV4_ADDR_RANGE) != (net.version == 4):
        return None
    lo = max(ts.start, net.network_address)
    hi = min(ts.end, net.broadcast_address)
    if lo > hi:
        return None
    blocks = list(ipaddress.summarize_address_range(lo, hi))
    return max(blocks, key=lambda b: (b.num_addresses, -int(b.network_address)))


def narrow(offered: list[TrafficSelector], config: Net) -> Net | None:
    """Responder (2.9): the first offered selector that overlaps ``config``, narrowed to it."""
    for ts in offered:
        n = _intersect(ts, config)
        if n is not None:
            return n
    return None


def within(answer: list[TrafficSelector], config: Net) -> Net | None:
    """Initiator: the responder's (one) selector when it lies inside what we offered."""
    if len(answer) != 1:
        return None
    ts = answer[0]
    n = _intersect(ts, config)
    if n is None or n.network_address != ts.start or n.broadcast_address != ts.end:
        return None
    return n
