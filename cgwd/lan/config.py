"""``[[lan_neighbor]]``: the on-prem routers cgwd peers with over the LAN (issue 17).

One table per router, for the whole box (a router has one BGP session with the box, whatever
VPN connections the box runs); ``vpns`` says which VPN connections it serves (default: all)::

    [[lan_neighbor]]
    name = "core1"                      # default lan0, lan1, ...
    address = "10.200.0.10"             # the router
    local_address = "10.200.0.1"        # ours on the LAN: the next hop of what we announce
    remote_asn = 65010                  # = local_asn: iBGP; else eBGP (4-octet ASNs)
    local_asn = 65000                   # default: the served BGP VPNs' local_asn
    password = "..."                    # or password_file: TCP MD5 (RFC 2385), never shown
    hold_time = 90                      # 0 or 3-65535 seconds
    passive = false                     # true: wait for the router to connect
    vpns = ["vpc-a"]                    # default: every VPN connection
    as_path = "aws"                     # the VPC prefixes carry AWS's AS path; "originate": ours only
    prepend = 2                         # eBGP: extra copies of local_asn on what we announce (0-10)
    med = 50                            # MULTI_EXIT_DISC on what we announce (default: none)
    max_prefix = 10000                  # accepted prefixes kept; more are refused (counted)
    summarise = ["10.50.0.0/16"]        # to AWS: the summary instead of accepted prefixes inside it
    import = ["10.50.0.0/16 le 24", "192.168.10.0/24"]   # required; [] learns nothing
    bfd = false                         # BFD (RFC 5880/5881 single hop) on the session
    bfd_interval_ms = 300               # desired TX and required RX, 50-10000 ms
    bfd_multiplier = 3                  # detect multiplier, 1-255

``import`` is the explicit filter of what the router may give to AWS: a prefix is accepted
when it lies inside one rule's prefix with a length in the rule's range: no ``ge``/``le``
the exact prefix only; ``le M`` lengths up to M; ``ge N`` lengths N to the family's
maximum; both: N to M (FRR's prefix-list semantics). Link-local, multicast, loopback and
the default route (unless a rule is exactly ``0.0.0.0/0`` or ``::/0``) are never accepted.

``as_path`` says what path the VPC prefixes carry to the router. ``"aws"`` (the default): the
AS_PATH (and ORIGIN) the best route was learned with from AWS, as a router doing this job
passes it on: on eBGP the session puts ``local_asn`` in front (plus ``prepend`` copies), so
the router sees ``local_asn aws_asn``; on iBGP it goes unchanged. ``"originate"``: cgwd's own
path only (``local_asn`` and the prepend; empty on iBGP). A static VPN's prefixes have no
learned path: they are originated either way. A router whose ASN is AWS's (64512 is AWS's
default and common on-prem) would drop AWS's path as a loop: that is refused here, with
``"originate"`` as the fix.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import (_NAME_RE, ConfigChange, _Bad, _bool, _choice, _diff, _get, _int, _list_of,
                      _str, _tname)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LAN_KEYS = {"name", "address", "local_address", "remote_asn", "local_asn", "password", "password_file",
            "hold_time", "passive", "vpns", "import", "max_prefix", "summarise", "bfd", "bfd_interval_ms",
            "bfd_multiplier", "prepend", "med", "as_path"}
DEFAULT_HOLD_TIME = 90
DEFAULT_MAX_PREFIX = 10000   # accepted prefixes kept per router; more are refused (counted), never a reset
MD5_MAX_KEY = 80
DEFAULT_BFD_INTERVAL_MS = 300   # BFD desired TX = required RX (RFC 5880); detection = x multiplier
DEFAULT_BFD_MULTIPLIER = 3
MAX_PREPEND = 10             # as for a [[vpn]]'s prepend
AS_PATH_AWS = "aws"          # the VPC prefixes carry the AS path learned from AWS
AS_PATH_ORIGINATE = "originate"   # cgwd announces them as their originator
AS_PATH_MODES = (AS_PATH_AWS, AS_PATH_ORIGINATE)
_RULE_RE = re.compile(r"^\s*(\S+)((?:\s+(?:ge|le)\s+\d+)*)\s*$")
_BOUND_RE = re.compile(r"(ge|le)\s+(\d+)")
_NEVER4 = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "224.0.0.0/4", "127.0.0.0/8", "240.0.0.0/4")]
_NEVER6 = [ipaddress.ip_network(n) for n in ("fe80::/10", "ff00::/8", "::1/128")]


@dataclass(frozen=True)
class PrefixRule:
    """``prefix [ge N] [le M]``: prefixes inside ``prefix`` with a length in [lo, hi]."""

    prefix: IPNetwork
    ge: int | None = None
    le: int | None = None

    @property
    def lo(self) -> int:
        return self.ge if self.ge is not None else self.prefix.prefixlen

    @property
    def hi(self) -> int:
        if self.le is not None:
            return self.le
        return self.prefix.max_prefixlen if self.ge is not None else self.prefix.prefixlen

    def matches(self, net: IPNetwork) -> bool:
        return (net.version == self.prefix.version and self.lo <= net.prefixlen <= self.hi
                and net.subnet_of(self.prefix))

    def __str__(self) -> str:
        bounds = "".join(f" {k} {v}" for k, v in (("ge", self.ge), ("le", self.le)) if v is not None)
        return f"{self.prefix}{bounds}"

    @classmethod
    def parse(cls, text: Any) -> "PrefixRule":
        """``"10.0.0.0/8 le 24"``; raises ValueError with the reason."""
        if not isinstance(text, str):
            raise ValueError(f"must be a string like \"10.0.0.0/8 le 24\", not {_tname(text)}")
        m = _RULE_RE.match(text)
        if not m:
            raise ValueError(f"{text!r}: must look like \"10.0.0.0/8\", \"10.0.0.0/8 le 24\" or "
                             "\"10.0.0.0/8 ge 16 le 24\"")
        try:
            net = ipaddress.ip_network(m.group(1), strict=True)
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
        bounds: dict[str, int] = {}
        for k, v in _BOUND_RE.findall(m.group(2)):
            if k in bounds:
                raise ValueError(f"{text!r}: {k} given twice")
            bounds[k] = int(v)
        ge, le = bounds.get("ge"), bounds.get("le")
        for k, v in bounds.items():
            if not net.prefixlen <= v <= net.max_prefixlen:
                raise ValueError(f"{text!r}: {k} {v} must be between the prefix length {net.prefixlen} "
                                 f"and {net.max_prefixlen}")
        if ge is not None and le is not None and ge > le:
            raise ValueError(f"{text!r}: ge {ge} is greater than le {le}")
        return cls(net, ge, le)


@dataclass(frozen=True)
class ImportFilter:
    """What a LAN router may give to AWS: default deny, then the rules (first match)."""

    rules: tuple[PrefixRule, ...] = ()

    def reason(self, prefix: str) -> str:
        """"accepted", or why not (for status and the refused counters)."""
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            return "not a prefix"
        never = _NEVER4 if net.version == 4 else _NEVER6
        if any(net.subnet_of(n) for n in never):
            return "link-local, multicast or loopback space"
        if net.prefixlen == 0 and not any(r.prefix.prefixlen == 0 and r.hi == 0 for r in self.rules):
            return "default route (allow it with an exact \"0.0.0.0/0\" rule)"
        if any(r.matches(net) for r in self.rules):
            return "accepted"
        return "not in the import filter" if self.rules else "empty import filter"

    def accepts(self, prefix: str) -> bool:
        return self.reason(prefix) == "accepted"

    def to_config(self) -> list[str]:
        return [str(r) for r in self.rules]


@dataclass(frozen=True)
class LanNeighborConfig:
    name: str
    address: IPAddress
    local_address: IPAddress
    remote_asn: int
    local_asn: int
    import_filter: ImportFilter = ImportFilter()
    hold_time: int = DEFAULT_HOLD_TIME
    passive: bool = False
    vpns: tuple[str, ...] = ()          # the VPN connections served (all of them when loaded)
    max_prefix: int = DEFAULT_MAX_PREFIX
    summarise: tuple[IPNetwork, ...] = ()  # sent to AWS instead of the accepted prefixes inside them
    bfd: bool = False
    bfd_interval_ms: int = DEFAULT_BFD_INTERVAL_MS
    bfd_multiplier: int = DEFAULT_BFD_MULTIPLIER
    prepend: int = 0                    # extra copies of local_asn on our announcements (eBGP only)
    med: int | None = None              # MULTI_EXIT_DISC on our announcements (None: not sent)
    as_path: str = AS_PATH_AWS          # "aws": carry AWS's path; "originate": ours only
    password: bytes = field(default=b"", repr=False)
    password_source: str = field(default="", compare=False)   # "", "inline" or the file's path

    @property
    def ibgp(self) -> bool:
        return self.local_asn == self.remote_asn

    def changes(self, new: "LanNeighborConfig") -> ConfigChange:
        """In place: the import filter, the VPNs served, the limits, what our announcements carry
        (prepend, MED, as_path: re-sent at once) and BFD (on/off, intervals: a Poll Sequence); anything else
        restarts the session."""
        return _lan_diff(self, new)


LAN_IN_PLACE = frozenset({"import_filter", "vpns", "max_prefix", "summarise", "bfd", "bfd_interval_ms",
                          "bfd_multiplier", "prepend", "med", "as_path"})
LAN_RESTART = frozenset({"address", "local_address", "remote_asn", "local_asn", "hold_time", "passive",
                         "password"})


def _lan_diff(old: LanNeighborConfig, new: LanNeighborConfig) -> ConfigChange:
    ch = _diff(old, new, LAN_IN_PLACE - {"import_filter"}, LAN_RESTART - {"password"})
    in_place, restart = set(ch.in_place), set(ch.restart)
    if old.import_filter != new.import_filter:
        in_place.add("import_filter")
    if old.password != new.password:
        restart.add("password")
    return ConfigChange(frozenset(in_place), frozenset(restart))


def _address(v: Any) -> IPAddress:
    if not isinstance(v, str):
        raise _Bad(f"must be an IP address string, not {_tname(v)}")
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        raise _Bad(f"{v!r} is not an IP address") from None
    if a.is_unspecified or a.is_multicast or a.is_loopback or a.is_link_local:
        raise _Bad(f"{a} is not a unicast address a router can have on the LAN")
    return a


def _rules(v: Any) -> ImportFilter:
    if not isinstance(v, list):
        raise _Bad(f"must be a list of prefixes like [\"10.50.0.0/16 le 24\"], not {_tname(v)}")
    rules = []
    for x in v:
        try:
            rules.append(PrefixRule.parse(x))
        except ValueError as e:
            raise _Bad(str(e)) from None
    if len(set(rules)) != len(rules):
        raise _Bad("lists the same rule twice")
    return ImportFilter(tuple(rules))


def _summary(v: Any) -> IPNetwork:
    if not isinstance(v, str):
        raise _Bad(f"must be a list of prefixes like [\"10.201.0.0/16\"], not a list of {_tname(v)}s")
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError as e:
        raise _Bad(f"{v!r}: {e}") from None
    never = _NEVER4 if net.version == 4 else _NEVER6
    if net.prefixlen == 0 or any(net.overlaps(n) for n in never):
        raise _Bad(f"{net} cannot be sent to AWS (the default route, link-local, multicast or loopback space)")
    return net


def _hold(v: Any) -> int:
    h = _int(v, 0, 65535, " seconds")
    if h in (1, 2):
        raise _Bad(f"must be 0 (no keepalives) or 3-65535 seconds (RFC 4271 4.2; got {h})")
    return h


def _password(c, t: str, d: dict, base_dir: str | None) -> tuple[bytes, str]:
    if "password" in d and "password_file" in d:
        c.err(t, "password", "give password or password_file, not both")
        return b"", ""
    if "password_file" in d:
        path = _get(c, t, d, "password_file", _str, "")
        if not path:
            return b"", ""
        full = path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)
        try:
            with open(full, "rb") as f:
                raw = f.read().rstrip(b"\r\n")
        except OSError as e:
            c.err(t, "password_file", f"cannot read {path}: {e.strerror}")
            return b"", path
        key, src = raw, path
    elif "password" in d:
        v = d["password"]
        if not isinstance(v, str):
            c.err(t, "password", f"must be a string, not {_tname(v)}")
            return b"", ""
        key, src = v.encode(), "inline"
    else:
        return b"", ""
    what = "password_file" if src != "inline" else "password"
    if not key:
        c.err(t, what, "is empty: remove it for a session without TCP MD5, or give the router's key")
    elif len(key) > MD5_MAX_KEY:
        c.err(t, what, f"is {len(key)} bytes; TCP MD5 keys are at most {MD5_MAX_KEY} (Linux TCP_MD5SIG)")
    elif b"\n" in key or b"\0" in key:
        c.err(t, what, "contains a newline or NUL byte: routers cannot enter such a key")
    return key, src


def parse_lan_neighbors(c, raw: Any, vpns: list, base_dir: str | None = None) -> tuple[LanNeighborConfig, ...]:
    """Validate the ``[[lan_neighbor]]`` tables against the parsed VPN connections; every bad
    value is one error of the collector ``c`` (cgwd.config's)."""
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        c.err("", "lan_neighbor", "must be written as [[lan_neighbor]] tables")
        return ()
    names = {v.name: v for v in vpns}
    out: list[LanNeighborConfig] = []
    seen_names: set[str] = set()
    seen_addr: set = set()
    for i, d in enumerate(raw):
        t = f"lan_neighbor[{i}]"
        n0 = len(c.errors)
        c.unknown_keys(t, d, LAN_KEYS)
        name = _get(c, t, d, "name", _str, f"lan{i}")
        if not name or not _NAME_RE.match(name):
            c.err(t, "name", "must be letters, digits, '.', '_' or '-'")
        elif name in seen_names:
            c.err(t, "name", f"{name!r} names another [[lan_neighbor]] too")
        seen_names.add(name)
        for k, what in (("address", "the on-prem router's address"),
                        ("local_address", "this box's address on the LAN (the next hop it announces)"),
                        ("remote_asn", "the router's BGP ASN"),
                        ("import", "the import filter: the prefixes this router may give to AWS, "
                                   "e.g. [\"10.50.0.0/16 le 24\"] ([] for none)")):
            if k not in d:
                c.err(t, k, f"missing: {what}")
        addr = _get(c, t, d, "address", _address, None)
        local = _get(c, t, d, "local_address", _address, None)
        if addr is not None and local is not None:
            if addr.version != local.version:
                c.err(t, "local_address", f"{local} is IPv{local.version}, the router's address IPv{addr.version}")
            elif addr == local:
                c.err(t, "local_address", f"equals address {addr}: give the router's address and ours")
        if addr is not None:
            if addr in seen_addr:
                c.err(t, "address", f"{addr} is another [[lan_neighbor]]'s address: one session per router")
            seen_addr.add(addr)
        remote_asn = _get(c, t, d, "remote_asn", lambda v: _int(v, 1, 2**32 - 1), 0)
        served = _get(c, t, d, "vpns", _list_of(_str), [v.name for v in vpns])
        for v in served:
            if v not in names:
                known = ", ".join(repr(n) for n in names) or "none"
                c.err(t, "vpns", f"{v!r} is not a [[vpn]] of this file (its VPN connections: {known})")
        if len(set(served)) != len(served):
            c.err(t, "vpns", "lists the same VPN connection twice")
        if "local_asn" in d:
            local_asn = _get(c, t, d, "local_asn", lambda v: _int(v, 1, 2**32 - 1), 0)
        else:
            asns = sorted({names[v].local_asn for v in served if v in names and names[v].routing == "bgp"})
            local_asn = asns[0] if len(asns) == 1 else 0
            if len(asns) > 1:
                c.err(t, "local_asn", f"missing: the VPN connections it serves use ASNs "
                      f"{', '.join(map(str, asns))}; say which one this session uses")
            elif not asns:
                c.err(t, "local_asn", "missing: no BGP VPN connection it serves gives an ASN to use")
        filt = _get(c, t, d, "import", _rules, ImportFilter())
        hold = _get(c, t, d, "hold_time", _hold, DEFAULT_HOLD_TIME)
        passive = _get(c, t, d, "passive", _bool, False)
        max_prefix = _get(c, t, d, "max_prefix", lambda v: _int(v, 1, 1_000_000), DEFAULT_MAX_PREFIX)
        key, src = _password(c, t, d, base_dir)
        summarise = _get(c, t, d, "summarise", _list_of(_summary), [])
        if len(set(summarise)) != len(summarise):
            c.err(t, "summarise", "lists the same prefix twice")
        for i_, a in enumerate(summarise):
            for b in summarise[i_ + 1:]:
                if a.version == b.version and a.overlaps(b):
                    c.err(t, "summarise", f"{a} and {b} overlap: a prefix would have two summaries")
        bfd = _get(c, t, d, "bfd", _bool, False)
        bfd_iv = _get(c, t, d, "bfd_interval_ms", lambda v: _int(v, 50, 10000, " ms"), DEFAULT_BFD_INTERVAL_MS)
        bfd_mult = _get(c, t, d, "bfd_multiplier", lambda v: _int(v, 1, 255), DEFAULT_BFD_MULTIPLIER)
        prepend = _get(c, t, d, "prepend", lambda v: _int(v, 0, MAX_PREPEND), 0)
        med = _get(c, t, d, "med", lambda v: _int(v, 0, 2**32 - 1), None)
        if prepend and local_asn and local_asn == remote_asn:
            c.err(t, "prepend", f"prepend = {prepend} on an iBGP session (remote_asn = local_asn = {local_asn}): "
                  "the router would find its own AS in the path and drop the routes; use med instead")
        as_path = _get(c, t, d, "as_path", lambda v: _choice(v, AS_PATH_MODES), AS_PATH_AWS)
        if as_path == AS_PATH_AWS and remote_asn:
            for v in served:
                vpn = names.get(v)
                if vpn is not None and vpn.routing == "bgp" and vpn.remote_asn == remote_asn:
                    given = "as_path = \"aws\"" if "as_path" in d else "as_path (default \"aws\")"
                    c.err(t, "as_path", f"{given} carries AWS's AS path, which starts with AS{remote_asn} "
                          f"(remote_asn of [[vpn]] {v!r}), and the router is AS{remote_asn} too: it would find "
                          "its own ASN in the path and drop every VPC prefix as a loop. Set "
                          "as_path = \"originate\" (cgwd announces them as its own), or peer from another ASN")
                    break
        if len(c.errors) != n0 or addr is None or local is None:
            continue
        out.append(LanNeighborConfig(name=name, address=addr, local_address=local, remote_asn=remote_asn,
                                     local_asn=local_asn, import_filter=filt, hold_time=hold, passive=passive,
                                     vpns=tuple(served), max_prefix=max_prefix, summarise=tuple(summarise),
                                     bfd=bfd, bfd_interval_ms=bfd_iv, bfd_multiplier=bfd_mult,
                                     prepend=prepend, med=med, as_path=as_path, password=key,
                                     password_source=src))
    return tuple(out)
