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
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from .bgp.policy import ImportPolicy

__all__ = [
    "Config",
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

#: strongSwan-style DH names -> IANA group numbers.
DH_GROUPS: dict[str, int] = {
    "modp1024": 2,
    "modp1536": 5,
    "modp2048": 14,
    "modp3072": 15,
    "modp4096": 16,
    "modp6144": 17,
    "modp8192": 18,
    "ecp256": 19,
    "ecp384": 20,
    "ecp521": 21,
    "modp1024s160": 22,
    "modp2048s224": 23,
    "modp2048s256": 24,
}
DH_NAMES: dict[int, str] = {v: k for k, v in DH_GROUPS.items()}
IKE_DH_ALLOWED = frozenset([2, *range(14, 25)])  # AWS phase 1
ESP_DH_ALLOWED = frozenset([2, 5, *range(14, 25)])  # AWS phase 2 (PFS)
IKE_ENC = ("aes128", "aes256")
ESP_ENC = ("aes128", "aes256", "aes128gcm16", "aes256gcm16")
INTEG = ("sha1", "sha256", "sha384", "sha512")

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
IFNAME_PREFIX = "cgw-"
IFNAMSIZ = 15  # usable characters of a Linux interface name
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

DEFAULT_SOCKET = "/run/cgwd/cgwd.sock"
DEFAULT_CONFIG = "/etc/cgwd/cgwd.toml"

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


@dataclass(frozen=True)
class Proposal:
    """A parsed proposal string ``enc-integ-dh`` (integ omitted for GCM; dh optional for ESP)."""

    text: str
    encryption: str  # aes128|aes256|aes128gcm16|aes256gcm16
    integrity: str | None  # sha1|sha256|sha384|sha512, None for GCM
    dh: str | None  # strongSwan name, e.g. "modp1024"; for ESP: the PFS group or None
    dh_group: int | None  # IANA number, e.g. 2

    def __str__(self) -> str:
        return self.text


def parse_proposal(text: str, kind: str) -> Proposal:
    """Parse and check one proposal against AWS's allowed set.

    ``kind`` is "ike" (phase 1) or "esp" (phase 2).  Raises ValueError with a plain message.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("a proposal must be a non-empty string like 'aes128-sha1-modp1024'")
    parts = text.strip().lower().split("-")
    enc = parts[0]
    rest = parts[1:]
    enc_allowed = IKE_ENC if kind == "ike" else ESP_ENC
    if enc not in ESP_ENC:
        raise ValueError(
            f"{text!r}: unknown encryption {enc!r} (use one of {', '.join(enc_allowed)})"
        )
    gcm = enc.endswith("gcm16")
    if kind == "ike" and gcm:
        raise ValueError(
            f"{text!r}: AES-GCM is not allowed in IKEv1 phase 1 (AWS allows GCM only with IKEv2);"
            " use aes128 or aes256 with sha1/sha256/sha384/sha512"
        )
    integ: str | None = None
    if rest and rest[0] in INTEG:
        integ = rest.pop(0)
        if gcm:
            raise ValueError(f"{text!r}: {enc} is an AEAD cipher: leave out the integrity part")
    elif not gcm:
        got = f" (got {rest[0]!r})" if rest else ""
        raise ValueError(f"{text!r}: missing integrity algorithm, one of {', '.join(INTEG)}{got}")
    dh: str | None = None
    group: int | None = None
    if rest:
        dh = rest.pop(0)
        if dh not in DH_GROUPS:
            raise ValueError(
                f"{text!r}: unknown DH group {dh!r} (use e.g. modp1024, modp2048, ecp256)"
            )
        group = DH_GROUPS[dh]
        allowed = IKE_DH_ALLOWED if kind == "ike" else ESP_DH_ALLOWED
        if group not in allowed:
            which = "phase 1 (IKE): groups 2, 14-24" if kind == "ike" else "phase 2 (PFS): groups 2, 5, 14-24"
            raise ValueError(f"{text!r}: DH group {group} ({dh}) is not allowed by AWS in {which}")
    elif kind == "ike":
        raise ValueError(f"{text!r}: an IKE proposal needs a DH group, e.g. 'aes128-sha1-modp1024'")
    if rest:
        raise ValueError(f"{text!r}: unexpected trailing part {'-'.join(rest)!r}")
    return Proposal(text.strip().lower(), enc, integ, dh, group)


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
    local_address: IPv4Address
    public_address: IPv4Address
    remote_address: IPv4Address
    psk: bytes = field(repr=False, compare=True)
    local_id: str = ""
    remote_id: str = ""
    inside_cidr: IPv4Network = IPv4Network("169.254.10.0/30")
    inside_local: IPv4Interface = IPv4Interface("169.254.10.2/30")
    inside_remote: IPv4Address = IPv4Address("169.254.10.1")
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
    mtu: int = 1436
    mss: int = 1379
    datapath: str = "auto"
    enabled: bool = True
    # from the VPN connection
    advertise: tuple[IPv4Network, ...] = ()
    advertise_default: bool = False
    max_advertise: int = 100
    gateway_type: str = "vgw"
    ecmp: bool = False
    max_prefix: int = 1000
    max_prefix_action: str = "reset"
    import_policy: ImportPolicy = ImportPolicy("aws-default")
    psk_source: str = field(default="inline", compare=False)  # "inline" or the psk_file path

    @property
    def ike(self) -> list[Proposal]:
        return [parse_proposal(p, "ike") for p in self.ike_proposals]

    @property
    def esp(self) -> list[Proposal]:
        return [parse_proposal(p, "esp") for p in self.esp_proposals]

    def fingerprint(self) -> str:
        """A stable hash of every resolved setting, PSK included (never revealed).

        Two tunnels with the same fingerprint need no restart on reload.
        """
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("psk", "psk_source"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, ImportPolicy):
                v = v.to_config()
            elif isinstance(v, (tuple, list)):
                v = [str(x) for x in v]
            elif v is not None and not isinstance(v, (int, str, bool)):
                v = str(v)
            d[f.name] = v
        h = hashlib.sha256()
        h.update(json.dumps(d, sort_keys=True).encode())
        h.update(b"\0psk\0")
        h.update(hashlib.sha256(b"cgwd-psk" + self.psk).digest())
        return h.hexdigest()[:32]


@dataclass(frozen=True)
class VpnConfig:
    name: str
    local_address: IPv4Address
    public_address: IPv4Address
    local_asn: int
    remote_asn: int
    advertise: list[IPv4Network]
    advertise_default: bool
    max_advertise: int
    gateway_type: str
    ecmp: bool
    max_prefix: int
    max_prefix_action: str
    import_policy: ImportPolicy
    tunnels: list[TunnelConfig]


@dataclass
class Config:
    daemon: DaemonConfig
    vpns: list[VpnConfig]
    source: str
    warnings: list[str] = field(default_factory=list)

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
}
_PER_TUNNEL_ONLY = {"name", "remote_address", "inside_cidr"}
_VPN_KEYS = _VPN_ONLY_KEYS | (_TUNNEL_KEYS - _PER_TUNNEL_ONLY)

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
    "mtu": 1436,
    "mss": 1379,
    "enabled": True,
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


def _ipv4(v: Any) -> IPv4Address:
    s = _str(v)
    try:
        return IPv4Address(s)
    except ValueError:
        raise _Bad(f"{s!r} is not an IPv4 address") from None


def _net(v: Any) -> IPv4Network:
    s = _str(v)
    try:
        return IPv4Network(s, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            try:
                fixed = IPv4Network(s, strict=False)
                raise _Bad(f"{s!r} has host bits set (did you mean {str(fixed)!r}?)") from None
            except ValueError:
                pass
        raise _Bad(f"{s!r} is not an IPv4 prefix like '10.0.0.0/16'") from None


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

    c.unknown_keys("", data, {"daemon", "vpn"})
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
    if c.errors:
        raise ConfigError(c.errors)
    return Config(daemon=daemon, vpns=vpns_ok, source=source, warnings=c.warnings)


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


def _proposals(kind: str):
    def f(v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise _Bad("must be a non-empty list of proposals like ['aes128-sha1-modp1024']")
        out = []
        for p in v:
            try:
                out.append(parse_proposal(p, kind).text)
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
    local_asn = _get(c, t, d, "local_asn", lambda v: _int(v, 1, 2**32 - 1), 65000)
    remote_asn = _get(c, t, d, "remote_asn", lambda v: _int(v, 1, 2**32 - 1), 64512)
    if "local_asn" not in d:
        c.err(t, "local_asn", "missing: the customer gateway's BGP ASN (e.g. 65000)")
    if local_asn == remote_asn and "local_asn" in d:
        c.err(t, "local_asn", f"equals remote_asn {remote_asn}: AWS peers over eBGP, the ASNs must differ")
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
        if n.subnet_of(LINK_LOCAL):
            c.err(t, "advertise", f"{n} is link-local (169.254.0.0/16): AWS does not accept it")
            break
    adv_default = _get(c, t, d, "advertise_default", _bool, False)
    if adv_default and len(advertise) + 1 > max_adv >= len(advertise):
        c.err(t, "advertise_default", f"the default route makes {len(advertise) + 1} prefixes, more than max_advertise = {max_adv}: AWS resets the BGP session on prefix {max_adv + 1}")
    ecmp = _get(c, t, d, "ecmp", _bool, gw == "tgw")
    max_prefix = _get(c, t, d, "max_prefix", lambda v: _int(v, 1, 1_000_000), 5000 if gw == "tgw" else 1000)
    mpa = _get(c, t, d, "max_prefix_action", lambda v: _choice(v, ("warn", "drop", "reset")), "reset")
    imp = _get(c, t, d, "import", _parse_import, ImportPolicy("aws-default"))
    imp = imp.with_own(advertise)  # never import our own prefixes back (issue 5)

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
    )
    tunnels = []
    for j, td in enumerate(tun_raw):
        tc = _parse_tunnel(c, f"{t}.tunnel[{j}]", t, td, defaults, vpn_ctx, daemon, base_dir)
        if tc is not None:
            tunnels.append(tc)
    if len(c.errors) != nerr:
        return None
    return VpnConfig(
        name=name, local_address=local, public_address=public, local_asn=local_asn, remote_asn=remote_asn,
        advertise=list(advertise), advertise_default=adv_default, max_advertise=max_adv, gateway_type=gw,
        ecmp=ecmp, max_prefix=max_prefix, max_prefix_action=mpa, import_policy=imp, tunnels=tunnels,
    )


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
    remote = get("remote_address", _ipv4, IPv4Address("0.0.0.0"))
    local = get("local_address", _ipv4, vpn["local_address"])
    public = get("public_address", _ipv4, vpn["public_address"] if "local_address" not in td else local)
    if "inside_cidr" not in td:
        c.err(t, "inside_cidr", "missing: the tunnel's inside /30 from 169.254.0.0/16 (e.g. \"169.254.10.0/30\")")
    inside = get("inside_cidr", _net, None)
    if inside is not None:
        if inside.prefixlen != 30:
            c.err(t, "inside_cidr", f"{inside} must be a /30")
            inside = None
        elif not inside.subnet_of(LINK_LOCAL):
            c.err(t, "inside_cidr", f"{inside} is not inside 169.254.0.0/16")
            inside = None
        elif inside in RESERVED_INSIDE:
            c.err(t, "inside_cidr", f"{inside} is reserved by AWS (169.254.0-5.0/30 and 169.254.169.252/30 cannot be used)")
            inside = None
    ike = get("ike_proposals", _proposals("ike"), ())
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
    mtu = get("mtu", lambda v: _int(v, 576, 1500, " bytes"), 1436)
    mss = get("mss", lambda v: _int(v, 536, 1460, " bytes"), 1379)
    if mtu and mss and mss > mtu - 40:
        c.err(tbl("mss"), "mss", f"{mss} does not fit the tunnel MTU {mtu} (at most mtu - 40 = {mtu - 40})")
    if mtu and mtu > 1399 and any(p.split("-")[1:2] in (["sha384"], ["sha512"]) for p in esp or ()):
        c.warn(t, "mtu", f"{mtu} with SHA-384/512 in esp_proposals: AWS recommends a tunnel MTU of 1399")
    datapath = get("datapath", lambda v: _choice(v, ("auto", "kernel", "userspace")), "auto")
    enabled = get("enabled", _bool, True)
    local_id = get("local_id", _str, "") or str(public)
    remote_id = get("remote_id", _str, "") or str(remote)
    if len(c.errors) != nerr or psk is None or inside is None:
        return None
    hosts = list(inside.hosts())
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
        inside_local=IPv4Interface(f"{hosts[1]}/30"),
        inside_remote=hosts[0],
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
        advertise=vpn["advertise"],
        advertise_default=vpn["advertise_default"],
        max_advertise=vpn["max_advertise"],
        gateway_type=vpn["gateway_type"],
        ecmp=vpn["ecmp"],
        max_prefix=vpn["max_prefix"],
        max_prefix_action=vpn["max_prefix_action"],
        import_policy=vpn["import_policy"],
        psk_source=psk_source,
    )


def _cross_checks(c: _Collector, vpns_raw: list[dict], vpns: list[VpnConfig]) -> None:
    """Uniqueness across the whole file, checked on the raw tables so every clash is seen."""
    seen_vpn: dict[str, str] = {}
    seen_tun: dict[str, str] = {}
    seen_inside: list[tuple[IPv4Network, str]] = []
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
                    net = IPv4Network(ic, strict=False)
                except ValueError:
                    net = None
                if net is not None:
                    for other, where in seen_inside:
                        if net.overlaps(other):
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
