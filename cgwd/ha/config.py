"""The HA file, ``/etc/cgwd/ha.toml``: read by ``cgwctl ha`` only, never by the daemon.

Kept apart from ``cgwd.toml`` on purpose: the daemon's config is shared by every box, the
HA file differs per box (its VRRP address and peer, its priority), changing it needs no
reload, and the daemon never holds AWS credentials or calls AWS. Every problem is reported
at once with file, table and key (:class:`cgwd.config.ConfigError`); unknown keys are errors.

::

    [ha]
    state_dir = "/run/cgwd"        # ha.json (last transition and what the actions did), ha.lock
    failback = "none"              # none: the survivor keeps the role (nopreempt); preempt: the
                                   # primary takes it back once its tunnels are up again
    [ha.vrrp]                      # what `cgwctl ha keepalived` writes keepalived.conf from
    interface = "eth1"
    virtual_router_id = 51
    virtual_ipaddress = ["10.200.0.1/24"]
    unicast_src_ip = "10.200.0.2"
    unicast_peer = ["10.200.0.3"]
    priority = 150
    [ha.ec2]                       # the route-table takeover on becoming MASTER
    route_tables = ["rtb-0123456789abcdef0"]
    prefixes = ["10.200.0.0/24"]
    elastic_ip = "eipalloc-0123456789abcdef0"   # optional
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, ConfigIssue

__all__ = ["DEFAULT_HA_CONFIG", "Ec2Settings", "HaConfig", "VrrpSettings", "load_ha_config", "parse_ha_config"]

DEFAULT_HA_CONFIG = "/etc/cgwd/ha.toml"
FAILBACK = ("none", "preempt")
_RTB = re.compile(r"rtb-[0-9a-f]{8,17}")
_EIP = re.compile(r"eipalloc-[0-9a-f]{8,17}")
_ENI = re.compile(r"eni-[0-9a-f]{8,17}")
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


@dataclass(frozen=True)
class VrrpSettings:
    interface: str
    virtual_router_id: int
    virtual_ipaddress: tuple[str, ...]
    unicast_src_ip: str
    unicast_peer: tuple[str, ...]
    priority: int = 100
    advert_int: float = 1.0
    preempt_delay: int = 10
    health_interval: float = 2.0
    health_timeout: float = 3.0
    health_fall: int = 2
    health_rise: int = 2


@dataclass(frozen=True)
class Ec2Settings:
    route_tables: tuple[str, ...]
    prefixes: tuple[str, ...]
    elastic_ip: str | None = None
    network_interface: str | None = None  # default: the instance's primary interface (IMDS)
    region: str | None = None  # default: the instance's region (IMDS)
    endpoint_url: str | None = None  # an emulator or a VPC endpoint; default: AWS's for the region
    imds_url: str = "http://169.254.169.254"
    timeout: float = 3.0
    attempts: int = 5


@dataclass(frozen=True)
class HaConfig:
    source: str = "<defaults>"
    state_dir: str = "/run/cgwd"
    failback: str = "none"
    vrrp: VrrpSettings | None = None
    ec2: Ec2Settings | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.errors: list[ConfigIssue] = []

    def err(self, table: str, key: str, msg: str) -> None:
        self.errors.append(ConfigIssue(self.source, table, key, msg))

    def unknown(self, table: str, data: dict, known: set[str]) -> None:
        for k in data:
            if k not in known:
                self.err(table, k, f"unknown key (known: {', '.join(sorted(known))})")

    def table(self, data: dict, key: str, where: str) -> dict | None:
        v = data.get(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            self.err(where, key, "must be a table")
            return None
        return v

    def string(self, data: dict, table: str, key: str, default: Any = None, *, pattern: re.Pattern | None = None,
               what: str = "") -> Any:
        v = data.get(key, default)
        if v is default:
            return v
        if not isinstance(v, str) or not v:
            self.err(table, key, "must be a non-empty string")
            return default
        if pattern is not None and not pattern.fullmatch(v):
            self.err(table, key, f"{v!r} is not {what}")
            return default
        return v

    def number(self, data: dict, table: str, key: str, default: float, lo: float, hi: float, *,
               integer: bool = False) -> Any:
        v = data.get(key, default)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            self.err(table, key, f"must be {'an integer' if integer else 'a number'}")
            return default
        if not lo <= v <= hi:
            self.err(table, key, f"must be between {lo:g} and {hi:g} (got {v:g})")
            return default
        return v

    def strings(self, data: dict, table: str, key: str, *, required: bool, check=None, what: str = "") -> tuple:
        v = data.get(key)
        if v is None:
            if required:
                self.err(table, key, "is required")
            return ()
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.err(table, key, "must be a list of strings")
            return ()
        if required and not v:
            self.err(table, key, "must not be empty")
        out = []
        for x in v:
            norm = check(x) if check else x
            if norm is None:
                self.err(table, key, f"{x!r} is not {what}")
            else:
                out.append(norm)
        return tuple(out)


def _cidr(x: str) -> str | None:
    try:
        return str(ipaddress.ip_network(x, strict=True))
    except ValueError:
        return None


def _iface(x: str) -> str | None:
    try:
        return str(ipaddress.ip_interface(x))
    except ValueError:
        return None


def _addr(x: str) -> str | None:
    try:
        return str(ipaddress.ip_address(x))
    except ValueError:
        return None


def _url(x: str) -> str | None:
    u = urllib.parse.urlsplit(x)
    return x.rstrip("/") if u.scheme in ("http", "https") and u.hostname else None


def _vrrp(c: _Checker, d: dict) -> VrrpSettings | None:
    t = "ha.vrrp"
    c.unknown(t, d, {"interface", "virtual_router_id", "virtual_ipaddress", "unicast_src_ip", "unicast_peer",
                     "priority", "advert_int", "preempt_delay", "health_interval", "health_timeout",
                     "health_fall", "health_rise"})
    iface = c.string(d, t, "interface", pattern=_IFNAME, what="an interface name")
    if "interface" not in d:
        c.err(t, "interface", "is required: the LAN interface the virtual address lives on")
    src = d.get("unicast_src_ip")
    src_ok = _addr(src) if isinstance(src, str) else None
    if src_ok is None:
        c.err(t, "unicast_src_ip", "is required: this box's address on the VRRP interface")
    vrid = 0
    if "virtual_router_id" not in d:
        c.err(t, "virtual_router_id", "is required (1-255, the same on both boxes)")
    else:
        vrid = c.number(d, t, "virtual_router_id", 0, 1, 255, integer=True)
    vips = c.strings(d, t, "virtual_ipaddress", required=True, check=_iface, what="an address/prefix")
    peers = c.strings(d, t, "unicast_peer", required=True, check=_addr, what="an IP address")
    if src_ok and src_ok in peers:
        c.err(t, "unicast_peer", f"lists this box's own address {src_ok}")
    return VrrpSettings(
        interface=iface or "", virtual_router_id=vrid, virtual_ipaddress=vips, unicast_src_ip=src_ok or "",
        unicast_peer=peers, priority=c.number(d, t, "priority", 100, 1, 254, integer=True),
        advert_int=c.number(d, t, "advert_int", 1.0, 0.01, 255), preempt_delay=c.number(d, t, "preempt_delay", 10, 0, 1000, integer=True),
        health_interval=c.number(d, t, "health_interval", 2.0, 1, 3600),
        health_timeout=c.number(d, t, "health_timeout", 3.0, 1, 3600),
        health_fall=c.number(d, t, "health_fall", 2, 1, 100, integer=True),
        health_rise=c.number(d, t, "health_rise", 2, 1, 100, integer=True))


def _ec2(c: _Checker, d: dict) -> Ec2Settings:
    t = "ha.ec2"
    c.unknown(t, d, {"route_tables", "prefixes", "elastic_ip", "network_interface", "region", "endpoint_url",
                     "imds_url", "timeout", "attempts"})
    rtbs = c.strings(d, t, "route_tables", required=True, check=lambda x: x if _RTB.fullmatch(x) else None,
                     what="a route table id (rtb-...)")
    prefixes = c.strings(d, t, "prefixes", required=True, check=_cidr, what="a CIDR (network address/prefix)")
    return Ec2Settings(
        route_tables=rtbs, prefixes=prefixes,
        elastic_ip=c.string(d, t, "elastic_ip", pattern=_EIP, what="an allocation id (eipalloc-...)"),
        network_interface=c.string(d, t, "network_interface", pattern=_ENI, what="an interface id (eni-...)"),
        region=c.string(d, t, "region", pattern=_REGION, what="a region name like eu-west-1"),
        endpoint_url=_checked_url(c, d, t, "endpoint_url", None),
        imds_url=_checked_url(c, d, t, "imds_url", "http://169.254.169.254"),
        timeout=c.number(d, t, "timeout", 3.0, 0.1, 60), attempts=c.number(d, t, "attempts", 5, 1, 20, integer=True))


def _checked_url(c: _Checker, d: dict, t: str, key: str, default: str | None) -> str | None:
    v = c.string(d, t, key, default)
    if v is default:
        return v
    u = _url(v)
    if u is None:
        c.err(t, key, f"{v!r} is not an http:// or https:// URL")
        return default
    return u


def parse_ha_config(text: str, source: str = "<string>") -> HaConfig:
    c = _Checker(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([ConfigIssue(source, "", "", f"not valid TOML: {e}")]) from None
    c.unknown("", data, {"ha"})
    ha = c.table(data, "ha", "") or {}
    c.unknown("ha", ha, {"state_dir", "failback", "vrrp", "ec2"})
    failback = ha.get("failback", "none")
    if failback not in FAILBACK:
        c.err("ha", "failback", f"must be one of {', '.join(FAILBACK)} (got {failback!r})")
        failback = "none"
    state_dir = c.string(ha, "ha", "state_dir", "/run/cgwd")
    vd = c.table(ha, "vrrp", "ha")
    ed = c.table(ha, "ec2", "ha")
    vrrp = _vrrp(c, vd) if vd is not None else None
    ec2 = _ec2(c, ed) if ed is not None else None
    if c.errors:
        raise ConfigError(c.errors)
    warnings = []
    if vrrp is None and ec2 is None:
        warnings.append("neither [ha.vrrp] nor [ha.ec2] is set: `cgwctl ha notify` only records the state")
    return HaConfig(source=source, state_dir=state_dir, failback=failback, vrrp=vrrp, ec2=ec2,
                    warnings=tuple(warnings))


def load_ha_config(path: str = DEFAULT_HA_CONFIG) -> HaConfig:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([ConfigIssue(path, "", "", f"cannot read: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(path, "", "", "not UTF-8 text")]) from None
    return parse_ha_config(text, path)
