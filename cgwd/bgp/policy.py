"""Import/export policy for the AWS peering.

Import: default deny (RFC 8212) unless a policy is configured.  ``aws-default`` accepts
any prefix except the default route (0.0.0.0/0 and ::/0), our own advertised prefixes (and
more-specifics of them), anything inside 169.254.0.0/16 (the tunnel inside /30s) or inside
one of the tunnels' inside CIDRs (``inside``: an IPv6 VPN's /126s from fd00::/8, which a
VPC may share with ULA prefixes of its own, so not all of fd00::/8), link-local, multicast,
loopback and unspecified space of either family.

Export: the configured on-prem prefixes (optionally a default route), with a per-tunnel
AS_PATH prepend count and MED.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from .message import AS_SEQUENCE, Route

LINK_LOCAL4 = ipaddress.ip_network("169.254.0.0/16")
LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")

VGW_EXPORT_LIMIT = 100
TGW_EXPORT_LIMIT = 1000
VGW_MAX_PREFIX = 1000
TGW_MAX_PREFIX = 5000
MAX_PREFIX_ACTIONS = ("warn", "drop", "reset")

_PLEN = {str(i): i for i in range(33)}          # canonical IPv4 prefix lengths
_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET


def check_export_limit(prefixes, limit: int = VGW_EXPORT_LIMIT) -> None:
    """Raise ValueError when more prefixes are exported than AWS accepts.

    A VGW accepts at most 100 prefixes from a customer gateway (a Transit Gateway 1000);
    the 101st makes AWS reset the BGP session.
    """
    uniq = {str(ipaddress.ip_network(p, strict=False)) for p in prefixes}
    if len(uniq) > limit:
        raise ValueError(
            f"{len(uniq)} prefixes would be advertised to AWS but the limit is {limit} "
            f"(a virtual private gateway accepts at most 100 prefixes per BGP session; "
            f"exceeding it resets the session). Summarise the on-prem prefixes.")


_MODE_ALIASES = {"none": "deny", "list": "prefix-list"}


@dataclass(frozen=True, eq=False)
class ImportPolicy:
    """Decides which received prefixes enter the RIB (the one definition: the config file,
    the daemon and the BGP layer all use this class).

    ``mode``: "deny" (RFC 8212 default: nothing; config spelling "none"), "aws-default"
    (the config's default: any prefix except the default route, our own advertised
    prefixes and more-specifics of them, the inside 169.254.0.0/16 range and
    multicast/loopback/reserved space), "any" (accept all), or "prefix-list" (config
    spelling: a list of prefixes; only prefixes inside one of ``allow``, with the same
    exclusions as "aws-default").  ``deny`` always wins.

    Immutable and compared/hashed by its canonical settings, so it can live in the
    frozen TunnelConfig and take part in reload fingerprints.
    """
    mode: str = "deny"
    own_prefixes: tuple = ()
    allow: tuple = ()
    deny: tuple = ()
    accept_default_route: bool = False
    inside: tuple = ()           # the tunnels' inside CIDRs: never routed into a tunnel

    def __post_init__(self):
        mode = _MODE_ALIASES.get(self.mode, self.mode)
        if mode not in ("deny", "aws-default", "any", "prefix-list"):
            raise ValueError(f"unknown import policy {self.mode!r}")
        sa = object.__setattr__
        sa(self, "mode", mode)
        nets = {}
        for name in ("own_prefixes", "allow", "deny", "inside"):
            lst = [ipaddress.ip_network(p, strict=False) for p in getattr(self, name)]
            uniq = list(dict.fromkeys(lst))
            nets[name] = uniq
            sa(self, name, tuple(str(n) for n in uniq))
        sa(self, "_own", nets["own_prefixes"])
        sa(self, "_allow", nets["allow"])
        sa(self, "_deny", nets["deny"])
        sa(self, "_inside", nets["inside"])
        sa(self, "_cache", {})
        sa(self, "_v4cache", None)

    def _key(self):
        return (self.mode, frozenset(self.own_prefixes), frozenset(self.allow),
                frozenset(self.deny), self.accept_default_route, frozenset(self.inside))

    def __eq__(self, other):
        if not isinstance(other, ImportPolicy):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    @classmethod
    def aws_default(cls, own_prefixes=()) -> "ImportPolicy":
        return cls("aws-default", tuple(own_prefixes))

    @classmethod
    def from_config(cls, value, own_prefixes=()) -> "ImportPolicy":
        """``None`` -> deny (RFC 8212); a mode name ("aws-default", "none"/"deny", "any");
        a list of prefixes -> "prefix-list"; an ImportPolicy is returned with
        ``own_prefixes`` added."""
        if isinstance(value, ImportPolicy):
            return value.with_own(own_prefixes) if own_prefixes else value
        if value is None:
            return cls("deny", tuple(own_prefixes))
        if isinstance(value, str):
            return cls(value, tuple(own_prefixes))
        return cls("prefix-list", tuple(own_prefixes), allow=tuple(value))

    def with_own(self, own_prefixes) -> "ImportPolicy":
        """The same policy that also refuses ``own_prefixes`` (what we advertise)."""
        return ImportPolicy(self.mode, tuple(self.own_prefixes) + tuple(own_prefixes),
                            self.allow, self.deny, self.accept_default_route, self.inside)

    def with_inside(self, inside) -> "ImportPolicy":
        """The same policy that also refuses the tunnels' inside CIDRs ``inside`` (and
        anything inside them): a route there would take the BGP session's own path."""
        return ImportPolicy(self.mode, self.own_prefixes, self.allow, self.deny,
                            self.accept_default_route, tuple(self.inside) + tuple(inside))

    def to_config(self):
        """The config-file spelling: "aws-default", "none", "any" or the allow list."""
        if self.mode == "prefix-list":
            return list(self.allow)
        return "none" if self.mode == "deny" else self.mode

    def accepts(self, prefix) -> bool:
        """Is ``prefix`` (a string such as "10.0.0.0/16", or an ip_network) accepted?"""
        if self.mode == "deny":
            return False
        if prefix.__class__ is not str:
            prefix = str(prefix)
        if ":" not in prefix:                 # IPv4: integer fast path, no cache needed
            r = self._decide_v4(prefix)
            if r is not None:
                return r
        r = self._cache.get(prefix)
        if r is None:
            r = self._decide(prefix)
            if len(self._cache) < 200_000:
                self._cache[prefix] = r
        return r

    def accepted(self, prefixes) -> list:
        """``[self.accepts(p) for p in prefixes]``; "aws-default" without lists (nothing of
        ours, no inside CIDR, no deny) decides canonical IPv4 spellings here without a call
        per prefix (the RIB's per-UPDATE batch)."""
        accepts = self.accepts
        if self.mode != "aws-default" or any(self._v4cache or self._v4_nets()):
            return [accepts(p) for p in prefixes]
        dflt = bool(self.accept_default_route)
        plens, pton, af = _PLEN, _inet_pton, _AF_INET
        out = []
        append = out.append
        for p in prefixes:
            if p.__class__ is str:
                addr_s, _sep, plen_s = p.partition("/")
                plen = plens.get(plen_s)
                if plen is not None and ":" not in p:
                    try:
                        packed = pton(af, addr_s)
                    except (OSError, ValueError):
                        packed = None
                    if packed is not None:
                        # _decide_v4's "aws-default" without lists, as there
                        a = packed[0]
                        if plen == 0:
                            append(dflt)
                        elif plen >= 16 and a == 169 and packed[1] == 254:
                            append(False)
                        else:
                            append(not (plen >= 4 and a >= 224 or plen >= 8 and a == 127))
                        continue
            append(accepts(p))
        return out

    def reason(self, prefix: str) -> str:
        return "accepted" if self.accepts(prefix) else self._why(prefix)

    def _why(self, prefix: str) -> str:
        net = ipaddress.ip_network(prefix, strict=False)
        if self.mode == "deny":
            return "no import policy configured (RFC 8212 default deny)"
        if net.prefixlen == 0:
            return "default route"
        if net.version == 4 and net.subnet_of(LINK_LOCAL4):
            return "inside tunnel address range 169.254.0.0/16"
        if any(net.version == i.version and net.subnet_of(i) for i in self._inside):
            return "a tunnel's inside CIDR"
        if net.version == 6 and (net.subnet_of(LINK_LOCAL6) or net.is_multicast or net.is_loopback
                                 or net.is_unspecified):
            return "IPv6 link-local, multicast, loopback or unspecified space"
        if any(net.version == o.version and net.subnet_of(o) for o in self._own):
            return "one of our own advertised prefixes"
        return "not allowed by policy"

    def _v4_nets(self):
        nets = self._v4cache
        if nets is None:
            def conv(lst):
                return [(int(n.network_address), n.prefixlen) for n in lst if n.version == 4]
            nets = (conv(self._own), conv(self._allow), conv(self._deny), conv(self._inside))
            object.__setattr__(self, "_v4cache", nets)
        return nets

    @staticmethod
    def _covered(addr: int, plen: int, nets) -> bool:
        """Is addr/plen equal to or inside one of nets [(net_int, len)]?"""
        for net, nl in nets:
            if plen >= nl and (addr >> (32 - nl) if nl else 0) == (net >> (32 - nl) if nl else 0):
                return True
        return False

    def _decide_v4(self, prefix: str):
        """Integer fast path for IPv4 prefixes; None when not applicable.

        A canonical spelling ("10.1.2.0/24": what the decoder gives) is read by inet_pton,
        which takes exactly four decimal octets 0..255 without leading zeros; any other is
        read by :meth:`_parse_v4` (int() per part), with the same result for every string
        both accept."""
        addr_s, _sep, plen_s = prefix.partition("/")
        plen = _PLEN.get(plen_s)
        try:
            packed = _inet_pton(_AF_INET, addr_s) if plen is not None else None
        except (OSError, ValueError):
            packed = None
        if packed is None:
            parsed = self._parse_v4(prefix)
            if parsed is None:
                return None
            addr, plen = parsed
            a, b = addr >> 24, (addr >> 16) & 0xFF
        else:
            a, b = packed[0], packed[1]
            addr = None
        own, allow, deny, inside = self._v4cache or self._v4_nets()
        if deny or inside or own or self.mode != "aws-default":
            if addr is None:
                addr = int.from_bytes(packed, "big")
            return self._decide_v4_lists(a, b, addr, plen, own, allow, deny, inside)
        # "aws-default" with no lists (the common case): the fixed exclusions only
        if plen == 0:
            return bool(self.accept_default_route)
        if plen >= 16 and a == 169 and b == 254:                 # inside tunnel addresses
            return False
        return not (plen >= 4 and a >= 224 or plen >= 8 and a == 127)   # multicast/reserved, loopback

    @staticmethod
    def _parse_v4(prefix: str):
        """(address int, prefix length) of any "a.b.c.d/len" int() reads, or None."""
        try:
            addr_s, plen_s = prefix.split("/")
            o = addr_s.split(".")
            if len(o) != 4:
                return None
            a, b, c, d = int(o[0]), int(o[1]), int(o[2]), int(o[3])
            plen = int(plen_s)
        except ValueError:
            return None
        if not (0 <= plen <= 32) or max(a, b, c, d) > 255 or min(a, b, c, d) < 0:
            return None
        return (a << 24) | (b << 16) | (c << 8) | d, plen

    def _decide_v4_lists(self, a, b, addr, plen, own, allow, deny, inside) -> bool:
        if deny and self._covered(addr, plen, deny):
            return False
        if self.mode == "any":
            return True
        if plen == 0 and not self.accept_default_route:
            return False
        if plen >= 16 and a == 169 and b == 254:                 # inside tunnel addresses
            return False
        if inside and self._covered(addr, plen, inside):
            return False
        if plen >= 4 and a >= 224 or plen >= 8 and a == 127:      # multicast/reserved, loopback
            return False
        if own and self._covered(addr, plen, own):
            return False
        if self.mode == "prefix-list":
            return self._covered(addr, plen, allow)
        return True

    def _decide(self, prefix: str) -> bool:
        if self.mode == "deny":
            return False
        if ":" not in prefix:
            r = self._decide_v4(prefix)
            if r is not None:
                return r
        net = ipaddress.ip_network(prefix, strict=False)
        if any(net.version == d.version and net.subnet_of(d) for d in self._deny):
            return False
        if self.mode == "any":
            return True
        if net.prefixlen == 0 and not self.accept_default_route:
            return False
        if net.version == 4 and net.subnet_of(LINK_LOCAL4):
            return False
        if net.version == 6 and (net.subnet_of(LINK_LOCAL6) or net.is_multicast or net.is_loopback
                                 or net.is_unspecified):
            return False
        if any(net.version == i.version and net.subnet_of(i) for i in self._inside):
            return False
        if net.version == 4 and (net.is_multicast or net.is_loopback or net.is_reserved):
            return False
        if any(net.version == o.version and net.subnet_of(o) for o in self._own):
            return False
        if self.mode == "prefix-list":
            return any(net.version == a.version and net.subnet_of(a) for a in self._allow)
        return True


@dataclass(frozen=True)
class ExportPolicy:
    """What we announce on a tunnel: the one builder of our announcements."""
    prefixes: tuple = ()
    default_route: bool = False
    prepend: int = 0          # extra copies of our ASN (makes this tunnel the backup)
    med: int | None = None
    limit: int | None = VGW_EXPORT_LIMIT
    family: int = 4           # the VPN's inner family: its default route is 0.0.0.0/0 or ::/0

    def __post_init__(self):
        object.__setattr__(self, "prefixes", tuple(str(ipaddress.ip_network(str(p), strict=False))
                                                   for p in self.prefixes))

    @classmethod
    def from_tunnel(cls, tunnel) -> "ExportPolicy":
        """The export policy of a :class:`cgwd.config.TunnelConfig`: its ``advertise``,
        ``advertise_default``, ``prepend``, ``med`` and ``max_advertise`` (the gateway's
        limit: 100 to a VGW, 1000 to a Transit Gateway) and inner family."""
        return cls(tuple(tunnel.advertise), tunnel.advertise_default, tunnel.prepend, tunnel.med,
                   tunnel.max_advertise, tunnel.inner_family)

    def routes(self, local_asn: int) -> list[Route]:
        """Routes for BgpSession.announce() (the session adds our ASN once itself)."""
        prefixes = [str(ipaddress.ip_network(p, strict=False)) for p in self.prefixes]
        if self.default_route:
            prefixes.append("::/0" if self.family == 6 else "0.0.0.0/0")
        seen: dict = {}
        for p in prefixes:
            seen.setdefault(p, None)
        prefixes = list(seen)
        if self.limit is not None:
            check_export_limit(prefixes, self.limit)
        path = ((AS_SEQUENCE, (local_asn,) * self.prepend),) if self.prepend > 0 else ()
        return [Route(p, None, path, med=self.med) for p in prefixes]
