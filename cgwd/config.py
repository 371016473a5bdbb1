"""The cgwd configuration: one TOML file -> validated dataclasses.

Defaults are AWS's (Site-to-Site VPN tunnel options).  ``load_config`` reports every
problem at once (``ConfigError.errors``), each naming the file, the table (``vpn[0].tunnel[1]``)
and the key.  Pre-shared keys are never printed back: not in errors, not in ``repr``.

Layout::

    [daemon]            DaemonConfig
    [[vpn]]             VpnConfig        (any tunnel key may be set here as a default)
      [[vpn.tunnel]]    TunnelConfig     (inheritance resolved)
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from .bgp.policy import ImportPolicy
from .ike.crypto import GROUP_BY_NAME, GROUP_NAMES
from .ike.proposals import Proposal, parse_proposal

__all__ = [
    "Config",
    "ConfigChange",
    "TUNNEL_IN_PLACE",
    "TUNNEL_RESTART",
    "VPN_IN_PLACE",
    "VPN_RESTART",
    "DAEMON_IN_PLACE",
    "DAEMON_RESTART",
    "daemon_changes",
    "ConfigError",
    "ConfigIssue",
    "DaemonConfig",
    "ImportPolicy",
    "Proposal",
    "TunnelConfig",
    "VpnConfig",
    "DH_GROUPS",
    "PSK_RULE",
    "check_psk",
    "load_config",
    "parse_config",
    "parse_proposal",
]

# --------------------------------------------------------------------------- constants

#: strongSwan-style DH names <-> IANA group numbers (the one table, cgwd.ike.crypto).
DH_GROUPS: dict[str, int] = GROUP_BY_NAME
DH_NAMES: dict[int, str] = GROUP_NAMES

PSK_RULE = "must be 8-64 characters of [A-Za-z0-9._] and must not start with 0"
_PSK_RE = re.compile(r"^[A-Za-z0-9._]{8,64}$")

#: Inside /30s that AWS refuses (RFC 3927 link-local range, reserved blocks).
RESERVED_INSIDE = tuple(
    IPv4Network(n)
    for n in (
        "169.254.0.0/30",
        "169.254.1.0/30",
        "169.254.2.0/30",
        "169.254.3.0/30",
        "169.254.4.0/30",
        "169.254.5.0/30",
        "169.254.169.252/30",
    )
)
LINK_LOCAL = IPv4Network("169.254.0.0/16")
#: AWS takes IPv6 inside /126s from the unique-local fd00::/8 (TunnelInsideIpv6Cidr)
INSIDE6 = IPv6Network("fd00::/8")
LINK_LOCAL6 = IPv6Network("fe80::/10")
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface
#: AWS's TCP MSS for IPv6 inside traffic is 20 bytes below the IPv4 one (1379)
DEFAULT_MSS = {4: 1379, 6: 1359}
IFNAME_PREFIX = "cgw-"
IFNAMSIZ = 15  # usable characters of a Linux interface name
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

from .paths import DEFAULT_CONFIG, DEFAULT_SOCKET  # noqa: E402,F401 - defined there, re-exported

# ---------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where it is and what is wrong, in plain words."""

    file: str
    table: str  # "daemon", "vpn[0]", "vpn[0].tunnel[1]" or "" for the whole file
    key: str  # "" when the issue is about the table itself
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.table:
            where += f": {self.table}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is not usable; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ConfigIssue]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors) or "invalid configuration")


# ------------------------------------------------------------------------ proposals
# Proposal and parse_proposal(text, kind, ike_version=1) are cgwd.ike.proposals' (the one
# parser; config applies AWS's rules, aws=True, the default).


def check_psk(psk: str) -> str | None:
    """Return None if ``psk`` is acceptable to AWS, else the rule (never the key itself)."""
    if not _PSK_RE.match(psk) or psk.startswith("0"):
        return PSK_RULE
    return None


# ---------------------------------------------------------------------- dataclasses


# ImportPolicy is cgwd.bgp.policy.ImportPolicy (one definition for config, daemon and BGP).


@dataclass(frozen=True)
class DaemonConfig:
    socket: str = DEFAULT_SOCKET
    log_level: str = "info"
    datapath: str = "auto"
    metrics_listen: str = ""
    route_table: int = 254
    route_metric: int = 100
    route_protocol: int = 157
    reconcile_interval: int = 30


@dataclass(frozen=True)
class TunnelConfig:
    """One tunnel with every default and inherited value resolved."""

    name: str
    vpn: str
    ifname: str
    local_address: IPAddress
    public_address: IPAddress
    remote_address: IPAddress
    psk: bytes = field(repr=False, compare=True)
    local_id: str = ""
    remote_id: str = ""
    inside_cidr: IPNetwork = IPv4Network("169.254.10.0/30")  # or an IPv6 /126 from fd00::/8
    inside_local: IPInterface = IPv4Interface("169.254.10.2/30")  # network + 2 (ours)
    inside_remote: IPAddress = IPv4Address("169.254.10.1")  # network + 1 (AWS)
    local_asn: int = 65000
    remote_asn: int = 64512
    ike_proposals: tuple[str, ...] = ("aes128-sha1-modp1024",)
    ike_lifetime: int = 28800
    esp_proposals: tuple[str, ...] = ("aes128-sha1-modp1024",)
    esp_lifetime: int = 3600
    replay_window: int = 1024
    rekey_margin: int = 540
    rekey_fuzz: int = 100
    dpd_interval: int = 10
    dpd_retries: int = 3
    dpd_action: str = "restart"
    nat_traversal: str = "auto"
    hold_time: int = 30
    prepend: int = 0
    med: int | None = None
    mtu: int | None = None  # None: follows the negotiated transform (cgwd.esp.mtu)
    mss: int | None = None  # None: follows the MTU; 0: no clamping
    datapath: str = "auto"
    enabled: bool = True
    ike_version: int = 1  # 1 or 2; a config without it means IKEv1
    startup_action: str = "add"  # "add": we initiate; "start": AWS initiates (IKEv2), we only respond
    # from the VPN connection
    advertise: tuple[IPNetwork, ...] = ()
    advertise_default: bool = False
    max_advertise: int = 100
    gateway_type: str = "vgw"
    ecmp: bool = False
    max_prefix: int = 1000
    max_prefix_action: str = "reset"
    import_policy: ImportPolicy = ImportPolicy("aws-default")
    routing: str = "bgp"  # "bgp" or "static" (no BGP session on this tunnel)
    static_routes: tuple[IPNetwork, ...] = ()
    health_check: int | None = None  # ICMP echo interval to inside_remote (static only), None = off
    fail_closed: bool = True
    psk_source: str = field(default="inline", compare=False)  # "inline" or the psk_file path

    @property
    def inner_family(self) -> int:
        """4 or 6: the family of the inside addresses, BGP and the traffic this tunnel carries."""
        return self.inside_cidr.version

    @property
    def outer_family(self) -> int:
        """4 or 6: the family IKE and ESP run over (AWS's OutsideIpAddressType)."""
        return self.remote_address.version

    @property
    def ike(self) -> list[Proposal]:
        return [parse_proposal(p, "ike", self.ike_version) for p in self.ike_proposals]

    @property
    def esp(self) -> list[Proposal]:
        return [parse_proposal(p, "esp") for p in self.esp_proposals]

    def fingerprint(self) -> str:
        """A stable hash of every resolved setting, PSK included (never revealed).

        Two tunnels with the same fingerprint need nothing done on reload.
        """
        return _hash_fields(self, {f.name for f in fields(self)} - {"psk_source"})

    def restart_fingerprint(self) -> str:
        """A hash of the settings that need the tunnel restarted (:data:`TUNNEL_RESTART`:
        identity, addresses, PSK, proposals, lifetimes, IKE version...).  Equal restart
        fingerprints with different :meth:`fingerprint` s: reload applies
        :meth:`changes` ``.in_place`` to the running tunnel."""
        return _hash_fields(self, TUNNEL_RESTART)

    def changes(self, new: TunnelConfig) -> ConfigChange:
        """Which fields differ from ``new``, split into in-place and restart ones."""
        return _diff(self, new, TUNNEL_IN_PLACE, TUNNEL_RESTART)


@dataclass(frozen=True)
class VpnConfig:
    name: str
    local_address: IPAddress
    public_address: IPAddress
    local_asn: int
    remote_asn: int
    advertise: list[IPNetwork]
    advertise_default: bool
    max_advertise: int
    gateway_type: str
    ecmp: bool
    max_prefix: int
    max_prefix_action: str
    import_policy: ImportPolicy
    tunnels: list[TunnelConfig]
    routing: str = "bgp"
    static_routes: tuple[IPNetwork, ...] = ()
    static_primary: str = ""  # the tunnel carrying the static routes while it is up
    static_hold_down: int = 60  # seconds a returning primary must stay up before routes move back
    health_check: int | None = None  # seconds between ICMP echoes to AWS's inside address; None = off
    fail_closed: bool = True  # no tunnel carries a prefix -> unreachable, never cleartext

    @property
    def inner_family(self) -> int:
        """4 or 6 (one inner family per VPN connection, as AWS's TunnelInsideIpVersion)."""
        return self.tunnels[0].inner_family if self.tunnels else 4

    def changes(self, new: VpnConfig) -> ConfigChange:
        """VPN-level fields that differ from ``new`` (``tunnels`` excluded: compare the
        tunnels by name with :meth:`TunnelConfig.changes`).  A restart field here means
        every tunnel of the VPN restarts (its routing table and BGP identity change)."""
        return _diff(self, new, VPN_IN_PLACE, VPN_RESTART)


@dataclass(frozen=True)
class ConfigChange:
    """The fields that differ between two configs of one tunnel, VPN or daemon.

    ``in_place``: the running object takes them (BGP attributes and policies, limits, DPD
    timers, static-routing choices, log level); ``restart``: they need it restarted.
    Only field names, never values (a PSK change shows as ``"psk"``).
    """

    in_place: frozenset[str] = frozenset()
    restart: frozenset[str] = frozenset()

    @property
    def needs_restart(self) -> bool:
        return bool(self.restart)

    def __bool__(self) -> bool:
        return bool(self.in_place or self.restart)


#: TunnelConfig fields a running tunnel takes without restarting IKE/ESP: BGP attributes
#: and policies (UPDATEs at once), BGP session parameters (ASNs, hold time: the BGP session
#: restarts, IPsec stays up), limits, DPD and rekey timers (from the next exchange), the
#: administrative state, the routing table's settings, the gateway type (a label: the limits
#: it implies are fields of their own) and psk_source (where the PSK was read, status only;
#: the PSK itself is "psk"). cgwd/tunnel/changes.py says which part applies each.
TUNNEL_IN_PLACE = frozenset({
    "med", "prepend", "advertise", "advertise_default", "import_policy",
    "max_advertise", "max_prefix", "max_prefix_action",
    "dpd_interval", "dpd_retries", "dpd_action", "rekey_margin", "rekey_fuzz",
    "local_asn", "remote_asn", "hold_time", "enabled",
    "ecmp", "static_routes", "health_check", "fail_closed",
    "gateway_type", "psk_source",
})
#: Every other TunnelConfig field: identity, addresses, PSK, proposals, lifetimes, the
#: replay window, ike_version, startup_action, NAT-T, MTU/MSS, data path, routing.
TUNNEL_RESTART = frozenset(f.name for f in fields(TunnelConfig)) - TUNNEL_IN_PLACE
#: VpnConfig fields applied to the running routing table of a VPN.
VPN_IN_PLACE = frozenset({
    "advertise", "advertise_default", "max_advertise", "gateway_type", "ecmp", "max_prefix",
    "max_prefix_action", "import_policy", "static_routes", "static_primary", "static_hold_down",
    "health_check", "fail_closed",
})
VPN_RESTART = frozenset(f.name for f in fields(VpnConfig)) - VPN_IN_PLACE - {"tunnels"}
#: DaemonConfig fields a reload applies; the others take a daemon restart.
DAEMON_IN_PLACE = frozenset({"log_level", "reconcile_interval"})
DAEMON_RESTART = frozenset(f.name for f in fields(DaemonConfig)) - DAEMON_IN_PLACE


def _canon(v: Any) -> Any:
    if isinstance(v, ImportPolicy):  # every setting, own prefixes included
        return [v.mode, sorted(v.own_prefixes), sorted(v.allow), sorted(v.deny), v.accept_default_route]
    if isinstance(v, (tuple, list)):
        return [str(x) for x in v]
    if v is not None and not isinstance(v, (int, str, bool)):
        return str(v)
    return v


def _hash_fields(obj: Any, names: frozenset[str] | set[str]) -> str:
    d = {n: _canon(getattr(obj, n)) for n in sorted(names) if n != "psk"}
    h = hashlib.sha256()
    h.update(json.dumps(d, sort_keys=True).encode())
    if "psk" in names:
        h.update(b"\0psk\0")
        h.update(hashlib.sha256(b"cgwd-psk" + obj.psk).digest())
    return h.hexdigest()[:32]


def _diff(old: Any, new: Any, in_place: frozenset[str], restart: frozenset[str]) -> ConfigChange:
    changed = {n for n in in_place | restart if _canon(getattr(old, n)) != _canon(getattr(new, n))}
    if "psk" in restart and old.psk != new.psk:
        changed.add("psk")
    return ConfigChange(frozenset(changed & in_place), frozenset(changed & restart))


def daemon_changes(old: DaemonConfig, new: DaemonConfig) -> ConfigChange:
    return _diff(old, new, DAEMON_IN_PLACE, DAEMON_RESTART)


@dataclass
class Config:
    daemon: DaemonConfig
    vpns: list[VpnConfig]
    source: str
    warnings: list[str] = field(default_factory=list)
    lan_neighbors: tuple = ()  # cgwd.lan.config.LanNeighborConfig: [[lan_neighbor]] tables

    @property
    def tunnels(self) -> list[TunnelConfig]:
        return [t for v in self.vpns for t in v.tunnels]

    def tunnel(self, name: str) -> TunnelConfig | None:
        for t in self.tunnels:
            if t.name == name:
                return t
        return None


# --------------------------------------------------------------------------- schema

_DAEMON_KEYS = {f.name for f in fields(DaemonConfig)}
_VPN_ONLY_KEYS = {
    "name",
    "local_address",
    "public_address",
    "local_asn",
    "remote_asn",
    "advertise",
    "advertise_default",
    "max_advertise",
    "gateway_type",
    "ecmp",
    "max_prefix",
    "max_prefix_action",
    "import",
    "tunnel",
    "routing",
    "static_routes",
    "static_primary",
    "static_hold_down",
    "health_check",
    "fail_closed",
}
#: keys that may appear in [[vpn.tunnel]] and (except the per-tunnel ones) in [[vpn]]
_TUNNEL_KEYS = {
    "name",
    "remote_address",
    "psk",
    "psk_file",
    "local_id",
    "remote_id",
    "inside_cidr",
    "ike_proposals",
    "ike_lifetime",
    "esp_proposals",
    "esp_lifetime",
    "replay_window",
    "rekey_margin",
    "rekey_fuzz",
    "dpd_interval",
    "dpd_retries",
    "dpd_action",
    "nat_traversal",
    "hold_time",
    "prepend",
    "med",
    "mtu",
    "mss",
    "datapath",
    "enabled",
    "local_address",
    "public_address",
    "short_lifetimes",
    "ike_version",
    "startup_action",
}
_PER_TUNNEL_ONLY = {"name", "remote_address", "inside_cidr"}
_VPN_KEYS = _VPN_ONLY_KEYS | (_TUNNEL_KEYS - _PER_TUNNEL_ONLY)
ROUTING_MODES = ("bgp", "static")
#: keys that only mean something when BGP runs: an error with routing = "static"
BGP_ONLY_KEYS = (
    "local_asn", "remote_asn", "advertise", "advertise_default", "max_advertise",
    "max_prefix", "max_prefix_action", "import", "hold_time", "prepend", "med",
)
#: keys that only mean something with routing = "static": an error with routing = "bgp"
STATIC_ONLY_KEYS = ("static_routes", "static_primary", "static_hold_down", "health_check")

_TUNNEL_DEFAULTS: dict[str, Any] = {
    "local_id": "",
    "remote_id": "",
    "ike_proposals": ["aes128-sha1-modp1024"],
    "ike_lifetime": 28800,
    "esp_proposals": ["aes128-sha1-modp1024"],
    "esp_lifetime": 3600,
    "replay_window": 1024,
    "rekey_margin": 540,
    "rekey_fuzz": 100,
    "dpd_interval": 10,
    "dpd_retries": 3,
    "dpd_action": "restart",
    "nat_traversal": "auto",
    "hold_time": 30,
    "prepend": 0,
    "enabled": True,
    "ike_version": 1,
    "startup_action": "add",
}


class _Collector:
    def __init__(self, source: str):
        self.source = source
        self.errors: list[ConfigIssue] = []
        self.warnings: list[str] = []

    def err(self, table: str, key: str, message: str) -> None:
        self.errors.append(ConfigIssue(self.source, table, key, message))

    def warn(self, table: str, key: str, message: str) -> None:
        self.warnings.append(str(ConfigIssue(self.source, table, key, message)))

    def unknown_keys(self, table: str, data: dict, allowed: set[str], extra_hint: str = "") -> None:
        for k in data:
            if k in allowed:
                continue
            close = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.err(table, k, f"unknown key{hint}{extra_hint if not close else ''}")


# -- typed getters ------------------------------------------------------------------


class _Bad(Exception):
    pass


def _int(v: Any, lo: int | None = None, hi: int | None = None, what: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"must be an integer, not {_tname(v)}")
    if lo is not None and v < lo or hi is not None and v > hi:
        if hi is None:
            raise _Bad(f"must be at least {lo}{what} (got {v})")
        raise _Bad(f"must be between {lo} and {hi}{what} (got {v})")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, not {_tname(v)}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be a string, not {_tname(v)}")
    return v


def _choice(v: Any, choices: tuple[str, ...]) -> str:
    s = _str(v)
    if s not in choices:
        close = difflib.get_close_matches(s, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _Bad(f"must be one of {', '.join(choices)}; got {s!r}{hint}")
    return s


def _ipv4(v: Any) -> IPAddress:
    """An outside address: IPv4, or IPv6 (AWS's OutsideIpAddressType = Ipv6)."""
    s = _str(v)
    v6 = ":" in s
    try:
        a = IPv6Address(s) if v6 else IPv4Address(s)
    except ValueError:
        raise _Bad(f"{s!r} is not an IPv6 address" if v6 else f"{s!r} is not an IPv4 address") from None
    if a.is_unspecified or a.is_multicast or (v6 and a.is_link_local):
        raise _Bad(f"{s!r} cannot be an outside address (unspecified, multicast or link-local)")
    return a


def _net(v: Any) -> IPNetwork:
    s = _str(v)
    v6 = ":" in s
    cls = IPv6Network if v6 else IPv4Network
    try:
        return cls(s, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            try:
                fixed = cls(s, strict=False)
                raise _Bad(f"{s!r} has host bits set (did you mean {str(fixed)!r}?)") from None
            except ValueError:
                pass
        if v6:
            raise _Bad(f"{s!r} is not an IPv6 prefix like 'fd00:10::/64'") from None
        raise _Bad(f"{s!r} is not an IPv4 prefix like '10.0.0.0/16'") from None


def _within(a: IPAddress, n: IPNetwork) -> bool:
    """``a in n`` that is False across families (ipaddress compares raw integers)."""
    return a.version == n.version and a in n


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _family_word(version: int) -> str:
    return "IPv6" if version == 6 else "IPv4"


def _tname(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(v), type(v).__name__
    )


def _get(c: _Collector, table: str, data: dict, key: str, conv, default: Any = None) -> Any:
    if key not in data:
        return default
    try:
        return conv(data[key])
    except _Bad as e:
        c.err(table, key, str(e))
        return default


# ---------------------------------------------------------------------------- parse


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate ``path``.  Raises ConfigError listing every problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
            st = os.fstat(fh.fileno())
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(path, "", "", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(path, "", "", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError([ConfigIssue(path, "", "", "permission denied (run as root?)")]) from None
    except OSError as e:
        raise ConfigError([ConfigIssue(path, "", "", f"cannot read: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigIssue(path, "", "", f"not UTF-8 text (byte {e.start})")]) from None
    cfg = parse_config(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH) and any(
        t.psk_source == "inline" for t in cfg.tunnels
    ):
        mode = stat.S_IMODE(st.st_mode)
        cfg.warnings.insert(
            0,
            f"{path}: file mode {mode:04o} lets other users read the pre-shared keys in it;"
            f" run: chmod 600 {path}",
        )
    return cfg


def parse_config(text: str, source: str = "<config>", base_dir: str | None = None) -> Config:
    """Validate TOML ``text`` (what ``load_config`` does after reading the file)."""
    c = _Collector(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's messages name line and column, never the offending text
        raise ConfigError([ConfigIssue(source, "", "", f"not valid TOML: {e}")]) from None

    c.unknown_keys("", data, {"daemon", "vpn", "lan_neighbor"})
    daemon = _parse_daemon(c, data.get("daemon", {}))
    vpns_raw = data.get("vpn", [])
    if not isinstance(vpns_raw, list) or not all(isinstance(v, dict) for v in vpns_raw):
        c.err("", "vpn", "must be written as [[vpn]] tables")
        vpns_raw = []
    if not vpns_raw and not c.errors:
        c.warn("", "vpn", "no [[vpn]] connection configured; cgwd will idle")
    vpns = [_parse_vpn(c, i, v, daemon, base_dir) for i, v in enumerate(vpns_raw)]
    vpns_ok = [v for v in vpns if v is not None]
    _cross_checks(c, vpns_raw, vpns_ok)
    from .lan.config import parse_lan_neighbors  # cgwd.lan.config builds on this module's getters
    lan = parse_lan_neighbors(c, data.get("lan_neighbor"), vpns_ok, base_dir)
    if c.errors:
        raise ConfigError(c.errors)
    return Config(daemon=daemon, vpns=vpns_ok, source=source, warnings=c.warnings, lan_neighbors=lan)


def _parse_daemon(c: _Collector, d: Any) -> DaemonConfig:
    t = "daemon"
    if not isinstance(d, dict):
        c.err("", "daemon", "must be a [daemon] table")
        return DaemonConfig()
    c.unknown_keys(t, d, _DAEMON_KEYS)
    dflt = DaemonConfig()
    sock = _get(c, t, d, "socket", _str, dflt.socket)
    if not os.path.isabs(sock):
        c.err(t, "socket", f"must be an absolute path (got {sock!r})")
    metrics = _get(c, t, d, "metrics_listen", _str, "")
    if metrics:
        try:
            parse_listen(metrics)
        except ValueError as e:
            c.err(t, "metrics_listen", str(e))
    return DaemonConfig(
        socket=sock,
        log_level=_get(c, t, d, "log_level", lambda v: _choice(v, ("debug", "info", "warning", "error")), "info"),
        datapath=_get(c, t, d, "datapath", lambda v: _choice(v, ("auto", "kernel", "userspace")), "auto"),
        metrics_listen=metrics,
        route_table=_get(c, t, d, "route_table", lambda v: _int(v, 1, 2**32 - 1), 254),
        route_metric=_get(c, t, d, "route_metric", lambda v: _int(v, 0, 2**32 - 1), 100),
        route_protocol=_get(c, t, d, "route_protocol", lambda v: _int(v, 0, 255), 157),
        reconcile_interval=_get(c, t, d, "reconcile_interval", lambda v: _int(v, 1, 3600, " seconds"), 30),
    )


def parse_listen(s: str, allow_zero: bool = False) -> tuple[str, int]:
    """``"127.0.0.1:9474"`` / ``"[::1]:9474"`` -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", s)
    if not m:
        raise ValueError(f"must look like '127.0.0.1:9474' (got {s!r})")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"port must be 1-65535 (got {port})")
    return host, port


def _list_of(conv):
    def f(v: Any):
        if not isinstance(v, list):
            raise _Bad(f"must be a list, not {_tname(v)}")
        return [conv(x) for x in v]

    return f


def _proposals(kind: str, ike_version: int = 1):
    def f(v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise _Bad("must be a non-empty list of proposals like ['aes128-sha1-modp1024']")
        out = []
        for p in v:
            try:
                out.append(parse_proposal(p, kind, ike_version).text)
            except ValueError as e:
                raise _Bad(str(e)) from None
        return tuple(out)

    return f


def _parse_import(v: Any) -> ImportPolicy:
    if isinstance(v, str):
        if v in ("aws-default", "none"):
            return ImportPolicy(v)
        raise _Bad(f"must be \"aws-default\", \"none\" or a list of prefixes (got {v!r})")
    if isinstance(v, list):
        return ImportPolicy("prefix-list", allow=tuple(_net(x) for x in v))
    raise _Bad(f"must be \"aws-default\", \"none\" or a list of prefixes, not {_tname(v)}")


def _parse_vpn(c: _Collector, i: int, d: dict, daemon: DaemonConfig, base_dir: str | None) -> VpnConfig | None:
    t = f"vpn[{i}]"
    nerr = len(c.errors)
    c.unknown_keys(t, {k: 1 for k in d if k not in _PER_TUNNEL_ONLY - {"name"}}, _VPN_KEYS)
    for k in _PER_TUNNEL_ONLY - {"name"}:
        if k in d:
            c.err(t, k, "must be set in each [[vpn.tunnel]], not for the whole VPN connection")
    name = _get(c, t, d, "name", _str, f"vpn{i}")
    if not name or not _NAME_RE.match(name):
        c.err(t, "name", "must be letters, digits, '.', '_' or '-'")
    if "local_address" not in d:
        c.err(t, "local_address", "missing: this box's outside IPv4 address")
    local = _get(c, t, d, "local_address", _ipv4, IPv4Address("0.0.0.0"))
    public = _get(c, t, d, "public_address", _ipv4, local)
    routing = _get(c, t, d, "routing", lambda v: _choice(v, ROUTING_MODES), "bgp")
    static = routing == "static"
    _routing_keys(c, t, d, routing)
    local_asn = _get(c, t, d, "local_asn", lambda v: _int(v, 1, 2**32 - 1), 65000)
    remote_asn = _get(c, t, d, "remote_asn", lambda v: _int(v, 1, 2**32 - 1), 64512)
    if "local_asn" not in d and not static:
        c.err(t, "local_asn", "missing: the customer gateway's BGP ASN (e.g. 65000)")
    if local_asn == remote_asn and "local_asn" in d:
        c.err(t, "local_asn", f"equals remote_asn {remote_asn}: AWS peers over eBGP, the ASNs must differ")
    if static:
        local_asn = remote_asn = 0  # no BGP session: no ASN is used
    gw = _get(c, t, d, "gateway_type", lambda v: _choice(v, ("vgw", "tgw")), "vgw")
    aws_limit = 1000 if gw == "tgw" else 100
    max_adv = _get(c, t, d, "max_advertise", lambda v: _int(v, 1, 1000), aws_limit)
    if max_adv > aws_limit:
        c.err(t, "max_advertise", f"AWS accepts at most {aws_limit} prefixes from a customer gateway on a {gw.upper()} (got {max_adv})")
    advertise = _get(c, t, d, "advertise", _list_of(_net), [])
    if len(set(advertise)) != len(advertise):
        c.err(t, "advertise", "lists the same prefix twice")
    if len(advertise) > max_adv:
        c.err(t, "advertise", f"{len(advertise)} prefixes, more than max_advertise = {max_adv}: AWS resets the BGP session on prefix {max_adv + 1}")
    for n in advertise:
        if n.version == 4 and n.subnet_of(LINK_LOCAL):
            c.err(t, "advertise", f"{n} is link-local (169.254.0.0/16): AWS does not accept it")
            break
        if n.version == 6 and _overlap(n, LINK_LOCAL6):
            c.err(t, "advertise", f"{n} is link-local (fe80::/10): AWS does not accept it")
            break
    adv_default = _get(c, t, d, "advertise_default", _bool, False)
    if adv_default and len(advertise) + 1 > max_adv >= len(advertise):
        c.err(t, "advertise_default", f"the default route makes {len(advertise) + 1} prefixes, more than max_advertise = {max_adv}: AWS resets the BGP session on prefix {max_adv + 1}")
    ecmp = _get(c, t, d, "ecmp", _bool, gw == "tgw")
    max_prefix = _get(c, t, d, "max_prefix", lambda v: _int(v, 1, 1_000_000), 5000 if gw == "tgw" else 1000)
    mpa = _get(c, t, d, "max_prefix_action", lambda v: _choice(v, ("warn", "drop", "reset")), "reset")
    imp = _get(c, t, d, "import", _parse_import, ImportPolicy("aws-default"))
    imp = imp.with_own(advertise)  # never import our own prefixes back (issue 5)

    static_routes = _get(c, t, d, "static_routes", _list_of(_net), [])
    if static and not static_routes and "static_routes" not in d:
        c.err(t, "static_routes", "missing: with routing = \"static\" list the VPC's CIDRs to route into the tunnels, e.g. [\"10.0.0.0/16\"]")
    elif static and not static_routes:
        c.err(t, "static_routes", "is empty: with routing = \"static\" list the VPC's CIDRs to route into the tunnels, e.g. [\"10.0.0.0/16\"]")
    if len(set(static_routes)) != len(static_routes):
        c.err(t, "static_routes", "lists the same prefix twice")
    for n in static_routes:
        if n.version == 4 and n.subnet_of(LINK_LOCAL):
            c.err(t, "static_routes", f"{n} is inside 169.254.0.0/16 (link-local: the tunnels' inside addresses)")
            break
        if n.version == 6 and _overlap(n, LINK_LOCAL6):
            c.err(t, "static_routes", f"{n} overlaps fe80::/10 (link-local)")
            break
    hold_down = _get(c, t, d, "static_hold_down", lambda v: _int(v, 0, 3600, " seconds"), 60)
    health = _get(c, t, d, "health_check", _health_check, None)
    fail_closed = _get(c, t, d, "fail_closed", _bool, True)

    defaults = {k: d[k] for k in _TUNNEL_KEYS - _PER_TUNNEL_ONLY if k in d}
    tun_raw = d.get("tunnel", [])
    if not isinstance(tun_raw, list) or not all(isinstance(x, dict) for x in tun_raw):
        c.err(t, "tunnel", "must be written as [[vpn.tunnel]] tables")
        tun_raw = []
    if not tun_raw:
        c.err(t, "tunnel", "no [[vpn.tunnel]]: an AWS VPN connection has two tunnels")
    elif len(tun_raw) > 2:
        c.err(t, "tunnel", f"{len(tun_raw)} tunnels: an AWS VPN connection has exactly two")
    elif len(tun_raw) == 1:
        c.warn(t, "tunnel", "only one tunnel configured: AWS provides two, configure both for redundancy")
    vpn_ctx = dict(
        vpn=name, local_address=local, public_address=public, local_asn=local_asn, remote_asn=remote_asn,
        advertise=tuple(advertise), advertise_default=adv_default, max_advertise=max_adv, gateway_type=gw,
        ecmp=ecmp, max_prefix=max_prefix, max_prefix_action=mpa, import_policy=imp,
        routing=routing, static_routes=tuple(static_routes), health_check=health, fail_closed=fail_closed,
    )
    tunnels = []
    for j, td in enumerate(tun_raw):
        tc = _parse_tunnel(c, f"{t}.tunnel[{j}]", t, td, defaults, vpn_ctx, daemon, base_dir)
        if tc is not None:
            tunnels.append(tc)
    primary = _get(c, t, d, "static_primary", _str, "")
    names = [x.get("name") for x in tun_raw]
    if "static_primary" in d and primary not in names:
        known = ", ".join(repr(n) for n in names if isinstance(n, str)) or "none"
        c.err(t, "static_primary", f"{primary!r} is not a tunnel of this VPN connection (its tunnels: {known})")
    elif not primary and names and isinstance(names[0], str):
        primary = names[0]
    if static:
        _static_route_loops(c, t, static_routes, tunnels)
    _one_family(c, t, d, tun_raw, tunnels, advertise, static_routes, imp)
    if len(c.errors) != nerr:
        return None
    return VpnConfig(
        name=name, local_address=local, public_address=public, local_asn=local_asn, remote_asn=remote_asn,
        advertise=list(advertise), advertise_default=adv_default, max_advertise=max_adv, gateway_type=gw,
        ecmp=ecmp, max_prefix=max_prefix, max_prefix_action=mpa, import_policy=imp, tunnels=tunnels,
        routing=routing, static_routes=tuple(static_routes), static_primary=primary if static else "",
        static_hold_down=hold_down, health_check=health, fail_closed=fail_closed,
    )


def _routing_keys(c: _Collector, t: str, d: dict, routing: str) -> None:
    """Keys of the other routing mode are errors where they are written (VPN or tunnel)."""
    tunnels = [x for x in d.get("tunnel", []) if isinstance(x, dict)] if isinstance(d.get("tunnel"), list) else []
    if routing == "static":
        for k in BGP_ONLY_KEYS:
            if k in d:
                c.err(t, k, "means nothing with routing = \"static\" (no BGP runs on this VPN connection): remove it")
            for j, td in enumerate(tunnels):
                if k in td:
                    c.err(f"{t}.tunnel[{j}]", k, "means nothing with routing = \"static\" (no BGP runs on this VPN connection): remove it")
    else:
        for k in STATIC_ONLY_KEYS:
            if k in d:
                c.err(t, k, "applies only with routing = \"static\" (this VPN connection runs BGP, which learns the VPC's routes)")


def _one_family(c: _Collector, t: str, d: dict, tun_raw: list, tunnels: list[TunnelConfig], advertise: list,
                static_routes: list, imp: ImportPolicy) -> None:
    """One inner family per VPN connection (AWS's TunnelInsideIpVersion) and one outer
    family per tunnel (OutsideIpAddressType); prefixes of the other inner family are errors."""
    if not tunnels:
        return
    fam = tunnels[0].inner_family
    word = _family_word(fam)
    for j, tc in enumerate(tunnels[1:], 1):
        if tc.inner_family != fam:
            c.err(f"{t}.tunnel[{j}]", "inside_cidr", f"{tc.inside_cidr} is {_family_word(tc.inner_family)} but tunnel {tunnels[0].name!r} has {word} inside addresses: a VPN connection carries one family (AWS's TunnelInsideIpVersion); make a second VPN connection for the other")
    for key, nets in (("advertise", advertise), ("static_routes", static_routes), ("import", [ipaddress.ip_network(p) for p in imp.allow])):
        other = next((n for n in nets if n.version != fam), None)
        if other is not None:
            c.err(t, key, f"{other} is {_family_word(other.version)} but the tunnels' inside addresses are {word}: a VPN connection carries one family (AWS's TunnelInsideIpVersion); make a second VPN connection for the other")
    for tc in tunnels:
        for key, nets in (("advertise", advertise), ("static_routes", static_routes)):
            hit = next((n for n in nets if _overlap(n, tc.inside_cidr)), None)
            if hit is not None and fam == 6:
                c.err(t, key, f"{hit} overlaps the inside {tc.inside_cidr} of tunnel {tc.name!r}")


def _ike_version(v: Any) -> int:
    if isinstance(v, bool) or v not in (1, 2):
        shown = repr(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else _tname(v)
        raise _Bad(f"must be 1 (IKEv1) or 2 (IKEv2), the integer; got {shown}")
    return v


def _health_check(v: Any) -> int | None:
    if v is False:
        return None
    if v is True:
        raise _Bad("must be false or the interval in seconds between pings (e.g. 10), not true")
    return _int(v, 1, 3600, " seconds")


def _static_route_loops(c: _Collector, t: str, routes: list, tunnels: list[TunnelConfig]) -> None:
    """A static route covering an outside address would carry IKE/ESP into its own tunnel."""
    for n in routes:
        for tc in tunnels:
            hit = next((a for a in (tc.remote_address, tc.local_address, tc.public_address) if _within(a, n)), None)
            if hit is not None:
                whose = "AWS endpoint" if hit == tc.remote_address else "this box's outside address"
                c.err(t, "static_routes", f"{n} covers {whose} {hit} of tunnel {tc.name!r}: IKE and ESP to it would be routed into the tunnel itself")
                return


def _read_psk_file(c: _Collector, table: str, path: Any, base_dir: str | None) -> str | None:
    if not isinstance(path, str) or not path:
        c.err(table, "psk_file", "must be a path string")
        return None
    full = path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)
    try:
        with open(full, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read(4096)
    except FileNotFoundError:
        c.err(table, "psk_file", f"{path}: no such file")
        return None
    except PermissionError:
        c.err(table, "psk_file", f"{path}: permission denied")
        return None
    except OSError as e:
        c.err(table, "psk_file", f"{path}: cannot read ({e.strerror})")
        return None
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        c.warn(table, "psk_file", f"{path} is readable by other users; run: chmod 600 {path}")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return "\x00invalid"  # fails the PSK rule below without echoing anything


def _parse_tunnel(
    c: _Collector, t: str, vt: str, td: dict, defaults: dict, vpn: dict, daemon: DaemonConfig, base_dir: str | None
) -> TunnelConfig | None:
    nerr = len(c.errors)
    c.unknown_keys(t, td, _TUNNEL_KEYS)
    # PSK: tunnel-level psk/psk_file replace the VPN-level pair
    has_own = "psk" in td or "psk_file" in td
    src = td if has_own else defaults
    src_table = t if has_own else vt
    psk: str | None = None
    psk_source = "inline"
    if "psk" in src and "psk_file" in src:
        c.err(src_table, "psk", "set either psk or psk_file, not both")
    elif "psk" in src:
        if not isinstance(src["psk"], str):
            c.err(src_table, "psk", f"must be a string: {PSK_RULE}")
        else:
            psk = src["psk"]
    elif "psk_file" in src:
        psk = _read_psk_file(c, src_table, src["psk_file"], base_dir)
        psk_source = str(src["psk_file"])
    else:
        c.err(t, "psk", "missing: set psk = \"...\" or psk_file = \"/etc/cgwd/<tunnel>.psk\"")
    if psk is not None and check_psk(psk):
        key = "psk" if psk_source == "inline" else "psk_file"
        c.err(src_table, key, f"the pre-shared key {PSK_RULE}" if key == "psk_file" else PSK_RULE)

    merged = dict(_TUNNEL_DEFAULTS)
    merged["datapath"] = daemon.datapath
    merged.update({k: v for k, v in defaults.items() if k not in ("psk", "psk_file")})
    merged.update({k: v for k, v in td.items() if k not in ("psk", "psk_file")})

    def tbl(k: str) -> str:  # report a bad inherited value where it was written
        return t if k in td or k not in defaults else vt

    def get(k: str, conv, default: Any = None) -> Any:
        try:
            return conv(merged[k]) if k in merged else default
        except _Bad as e:
            c.err(tbl(k), k, str(e))
            return default

    name = get("name", _str, "")
    if "name" not in td:
        c.err(t, "name", "missing: every tunnel needs a name (used for the interface cgw-<name>)")
    elif not name or not _NAME_RE.match(name):
        c.err(t, "name", "must be letters, digits, '.', '_' or '-' and start with a letter or digit")
    ifname = IFNAME_PREFIX + name
    if len(ifname) > IFNAMSIZ:
        c.err(t, "name", f"{name!r} is too long: interface name {ifname!r} has {len(ifname)} characters, Linux allows {IFNAMSIZ} (use at most {IFNAMSIZ - len(IFNAME_PREFIX)})")
    if "remote_address" not in td:
        c.err(t, "remote_address", "missing: AWS's outside address of this tunnel")
    n_addr = len(c.errors)
    remote = get("remote_address", _ipv4, IPv4Address("0.0.0.0"))
    local = get("local_address", _ipv4, vpn["local_address"])
    public = get("public_address", _ipv4, vpn["public_address"] if "local_address" not in td else local)
    if len(c.errors) != n_addr or local.is_unspecified:
        pass  # the address itself is wrong or missing: said above
    elif "remote_address" in td and remote.version != local.version:
        c.err(t, "remote_address", f"{remote} is {_family_word(remote.version)} but local_address {local} is {_family_word(local.version)}: IKE and ESP run over one family (set local_address of that family for this tunnel)")
    elif public.version != local.version:
        c.err(tbl("public_address"), "public_address", f"{public} is {_family_word(public.version)} but local_address {local} is {_family_word(local.version)}")
    if "inside_cidr" not in td:
        c.err(t, "inside_cidr", "missing: the tunnel's inside /30 from 169.254.0.0/16 (e.g. \"169.254.10.0/30\"), or an IPv6 /126 from fd00::/8")
    inside = get("inside_cidr", _net, None)
    if inside is not None and inside.version == 6:
        if inside.prefixlen != 126:
            c.err(t, "inside_cidr", f"{inside} must be a /126 (AWS's IPv6 inside CIDRs are /126s from fd00::/8)")
            inside = None
        elif not inside.subnet_of(INSIDE6):
            c.err(t, "inside_cidr", f"{inside} is not inside fd00::/8")
            inside = None
    elif inside is not None:
        if inside.prefixlen != 30:
            c.err(t, "inside_cidr", f"{inside} must be a /30")
            inside = None
        elif not inside.subnet_of(LINK_LOCAL):
            c.err(t, "inside_cidr", f"{inside} is not inside 169.254.0.0/16")
            inside = None
        elif inside in RESERVED_INSIDE:
            c.err(t, "inside_cidr", f"{inside} is reserved by AWS (169.254.0-5.0/30 and 169.254.169.252/30 cannot be used)")
            inside = None
    ike_version = get("ike_version", _ike_version, 1)
    startup = get("startup_action", lambda v: _choice(v, ("add", "start")), "add")
    if startup == "start" and ike_version != 2:
        c.err(tbl("startup_action"), "startup_action", "\"start\" (AWS initiates, we only respond) needs IKEv2: set ike_version = 2 or startup_action = \"add\"")
    ike = get("ike_proposals", _proposals("ike", ike_version or 1), ())
    esp = get("esp_proposals", _proposals("esp"), ())
    ike_life = get("ike_lifetime", lambda v: _int(v, 900, 28800, " seconds"), 28800)
    # short_lifetimes (labs and tests only) lifts AWS's lower bounds so phase 2 rekeys every ~30 s
    short = get("short_lifetimes", _bool, False)
    if short:
        c.warn(tbl("short_lifetimes"), "short_lifetimes", "AWS's lower bounds on esp_lifetime (900 s) and rekey_margin (60 s) are lifted: for labs and tests only, an AWS endpoint may refuse such lifetimes")
    esp_lo, margin_lo = (60, 10) if short else (900, 60)
    esp_life = get("esp_lifetime", lambda v: _int(v, esp_lo, 3600, " seconds"), 3600)
    margin = get("rekey_margin", lambda v: _int(v, margin_lo, None, " seconds"), 540)
    if margin is not None and esp_life and margin > esp_life // 2:
        c.err(tbl("rekey_margin"), "rekey_margin", f"must be between {margin_lo} and half the ESP lifetime ({esp_life // 2} s for esp_lifetime = {esp_life}) (got {margin})")
    fuzz = get("rekey_fuzz", lambda v: _int(v, 0, 100, " percent"), 100)
    replay = get("replay_window", lambda v: _int(v, 64, 2048, " packets"), 1024)
    dpd_i = get("dpd_interval", lambda v: _int(v, 1, 3600, " seconds"), 10)
    dpd_r = get("dpd_retries", lambda v: _int(v, 1, 100), 3)
    dpd_a = get("dpd_action", lambda v: _choice(v, ("clear", "restart", "hold")), "restart")
    natt = get("nat_traversal", lambda v: _choice(v, ("auto", "force", "off")), "auto")
    hold = get("hold_time", lambda v: _int(v, 3, 65535, " seconds"), 30)
    prepend = get("prepend", lambda v: _int(v, 0, 10), 0)
    med = get("med", lambda v: _int(v, 0, 2**32 - 1), None)
    # unset: the data path follows the negotiated transform and encapsulation (AWS's table);
    # a configured mss is the MSS of the tunnel's family (IPv6: 20 below the IPv4 one)
    mtu = get("mtu", lambda v: _int(v, 576, 1500, " bytes"), None)
    fam = inside.version if inside is not None else 4
    mss = get("mss", lambda v: _int(v, 536, 1460, " bytes"), None)
    hdr = 40 if fam == 4 else 60  # IP + TCP headers
    if mtu and mss and mss > mtu - hdr:
        c.err(tbl("mss"), "mss", f"{mss} does not fit the tunnel MTU {mtu} (at most mtu - {hdr} = {mtu - hdr})")
    if mtu and mtu > 1399 and any(p.split("-")[1:2] in (["sha384"], ["sha512"]) for p in esp or ()):
        c.warn(t, "mtu", f"{mtu} with SHA-384/512 in esp_proposals: AWS recommends a tunnel MTU of 1399")
    datapath = get("datapath", lambda v: _choice(v, ("auto", "kernel", "userspace")), "auto")
    enabled = get("enabled", _bool, True)
    local_id = get("local_id", _str, "") or str(public)
    remote_id = get("remote_id", _str, "") or str(remote)
    if len(c.errors) != nerr or psk is None or inside is None:
        return None
    return TunnelConfig(
        name=name,
        vpn=vpn["vpn"],
        ifname=ifname,
        local_address=local,
        public_address=public,
        remote_address=remote,
        psk=psk.encode("ascii"),
        local_id=local_id,
        remote_id=remote_id,
        inside_cidr=inside,
        inside_local=ipaddress.ip_interface(f"{inside[2]}/{inside.prefixlen}"),
        inside_remote=inside[1],
        local_asn=vpn["local_asn"],
        remote_asn=vpn["remote_asn"],
        ike_proposals=tuple(ike),
        ike_lifetime=ike_life,
        esp_proposals=tuple(esp),
        esp_lifetime=esp_life,
        replay_window=replay,
        rekey_margin=margin,
        rekey_fuzz=fuzz,
        dpd_interval=dpd_i,
        dpd_retries=dpd_r,
        dpd_action=dpd_a,
        nat_traversal=natt,
        hold_time=hold,
        prepend=prepend,
        med=med,
        mtu=mtu,
        mss=mss,
        datapath=datapath,
        enabled=enabled,
        ike_version=ike_version,
        startup_action=startup,
        advertise=vpn["advertise"],
        advertise_default=vpn["advertise_default"],
        max_advertise=vpn["max_advertise"],
        gateway_type=vpn["gateway_type"],
        ecmp=vpn["ecmp"],
        max_prefix=vpn["max_prefix"],
        max_prefix_action=vpn["max_prefix_action"],
        import_policy=vpn["import_policy"],
        routing=vpn["routing"],
        static_routes=vpn["static_routes"],
        health_check=vpn["health_check"],
        fail_closed=vpn["fail_closed"],
        psk_source=psk_source,
    )


def _cross_checks(c: _Collector, vpns_raw: list[dict], vpns: list[VpnConfig]) -> None:
    """Uniqueness across the whole file, checked on the raw tables so every clash is seen."""
    seen_vpn: dict[str, str] = {}
    seen_tun: dict[str, str] = {}
    seen_inside: list[tuple[IPNetwork, str]] = []
    seen_remote: dict[tuple[str, str], str] = {}
    for i, v in enumerate(vpns_raw):
        vname = v.get("name", f"vpn{i}")
        if isinstance(vname, str):
            if vname in seen_vpn:
                c.err(f"vpn[{i}]", "name", f"duplicate VPN connection name {vname!r} (also {seen_vpn[vname]})")
            seen_vpn.setdefault(vname, f"vpn[{i}]")
        tl = v.get("tunnel", [])
        if not isinstance(tl, list):
            continue
        for j, td in enumerate(tl):
            if not isinstance(td, dict):
                continue
            t = f"vpn[{i}].tunnel[{j}]"
            n = td.get("name")
            if isinstance(n, str) and n:
                if n in seen_tun:
                    c.err(t, "name", f"duplicate tunnel name {n!r} (also {seen_tun[n]}): names must be unique across the file")
                seen_tun.setdefault(n, t)
            ic = td.get("inside_cidr")
            if isinstance(ic, str):
                try:
                    net = ipaddress.ip_network(ic, strict=False)
                except ValueError:
                    net = None
                if net is not None:
                    for other, where in seen_inside:
                        if _overlap(net, other):
                            c.err(t, "inside_cidr", f"{ic} overlaps {other} of {where}")
                            break
                    seen_inside.append((net, t))
            ra = td.get("remote_address")
            la = td.get("local_address", v.get("local_address"))
            if isinstance(ra, str) and isinstance(la, str):
                k = (la, ra)
                if k in seen_remote:
                    c.err(t, "remote_address", f"{ra} is already the peer of {seen_remote[k]} from the same local address: IKE could not tell them apart")
                seen_remote.setdefault(k, t)
