"""Turn what AWS hands out for a VPN connection into a cgwd TOML config.

Understood inputs (auto-detected):

* ``xml``     the ``CustomerGatewayConfiguration`` XML of DescribeVpnConnections
* ``json``    ``aws ec2 describe-vpn-connections`` output (one [[vpn]] per connection)
* ``generic`` the "Generic" vendor text download
* ``yamaha``  the Yamaha RTX download
* ``cisco``   Cisco IOS / ASA downloads (keyring or tunnel-group style)

Every format is reduced to :class:`ImportedVpn`; :func:`render_vpn` emits TOML that
``cgwd.config.parse_config`` accepts.  Errors are :class:`ImportError_` with one line per
problem and never contain a pre-shared key.

What each format says beyond the addresses, keys and ASNs:

* IKE version: the JSON's ``TunnelOptions[].IkeVersions`` (IKEv2 whenever it is listed), the
  Generic download's "IKE version" line, Yamaha's ``ipsec ike version N 2``, Cisco's
  ``crypto ikev2``; the XML says none (IKEv1 unless ``ike_version=2`` is asked for).
* Algorithms and timers: the XML and the vendor texts carry AWS's minimum values; the JSON's
  tunnel option lists are the real settings (every combination becomes a proposal, in AWS's
  order), as are its lifetimes, rekey margin and fuzz, replay window, DPD timeout and
  action, and ``StartupAction``.
* Routing: static VPN connections (XML ``NoBGPVPNConnection`` without ``<bgp>``, JSON
  ``StaticRoutesOnly``, the Generic "Static Routing Configuration" section, a Yamaha or
  Cisco text without BGP) become ``routing = "static"`` with the VPC CIDRs the operator
  gives (``static_routes``).
* IPv6: ``TunnelInsideIpVersion = ipv6`` (/126 inside CIDRs), IPv6 outside addresses
  (``OutsideIpAddressType = Ipv6``); traffic selectors other than 0.0.0.0/0 and ::/0 are
  refused (cgwd is a route-based gateway).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from . import config as cfgmod

__all__ = [
    "AwsImportError",
    "ImportedTunnel",
    "ImportedVpn",
    "detect_format",
    "parse_aws",
    "render_config",
    "render_vpn",
    "import_aws",
    "merge_config",
    "toml_string",
    "write_private",
]


class AwsImportError(Exception):
    """Operator-facing import problem (one line per problem, no secrets)."""


ImportError_ = AwsImportError


@dataclass
class ImportedTunnel:
    index: int  # 1-based as in AWS's files
    psk: str | None = field(default=None, repr=False)
    cgw_outside: str | None = None
    aws_outside: str | None = None
    cgw_inside: str | None = None  # "169.254.x.2"
    aws_inside: str | None = None
    prefixlen: int = 30
    local_asn: int | None = None
    remote_asn: int | None = None
    hold_time: int | None = None
    ike_enc: str | None = None
    ike_integ: str | None = None
    ike_dh: int | None = None
    ike_lifetime: int | None = None
    esp_enc: str | None = None
    esp_integ: str | None = None
    esp_pfs: int | None = None
    esp_lifetime: int | None = None
    dpd_interval: int | None = None
    dpd_retries: int | None = None
    mss: int | None = None
    mtu: int | None = None
    # what only some formats say
    ike_versions: tuple[int, ...] = ()  # () = the download does not say
    startup_action: str | None = None  # "add" | "start" (JSON)
    psk_arn: str | None = None  # the PSK is kept in Secrets Manager (JSON PreSharedKeyArn)
    # the JSON's option lists (AWS's names, AWS's order); None = not given
    p1_enc: list[str] | None = None
    p1_integ: list[str] | None = None
    p1_dh: list[int] | None = None
    p2_enc: list[str] | None = None
    p2_integ: list[str] | None = None
    p2_dh: list[int] | None = None
    rekey_margin: int | None = None
    rekey_fuzz: int | None = None
    replay_window: int | None = None
    dpd_timeout: int | None = None
    dpd_timeout_action: str | None = None  # AWS's: "clear" | "none" | "restart"


@dataclass
class ImportedVpn:
    fmt: str
    vpn_id: str | None = None
    cgw_id: str | None = None
    vgw_id: str | None = None
    tgw_id: str | None = None
    tunnels: list[ImportedTunnel] = field(default_factory=list)
    static: bool = False  # static routing (no BGP)
    routes: list[str] = field(default_factory=list)  # static routes found in the download (the VPC side)
    aws_routes: list[str] = field(default_factory=list)  # JSON Routes: on-prem prefixes AWS routes to us
    inside_version: str | None = None  # JSON TunnelInsideIpVersion: "ipv4" | "ipv6"
    accelerated: bool = False  # JSON EnableAcceleration: Global Accelerator endpoints need NAT-T
    outside_type: str | None = None  # JSON OutsideIpAddressType: PublicIpv4 | PrivateIpv4 | Ipv6
    selectors: dict[str, str] = field(default_factory=dict)  # e.g. {"LocalIpv4NetworkCidr": "0.0.0.0/0"}

    @property
    def gateway_type(self) -> str:
        return "tgw" if self.tgw_id else "vgw"


FORMAT_NAMES = {
    "xml": "CustomerGatewayConfiguration XML",
    "json": "describe-vpn-connections JSON",
    "generic": "Generic text download",
    "yamaha": "Yamaha RTX download",
    "cisco": "Cisco IOS/ASA download",
}

# ------------------------------------------------------------------ algorithm names

_ENC = {
    "aes-128-cbc": "aes128", "aes128": "aes128", "aes-128": "aes128", "aes-cbc": "aes128", "aes": "aes128",
    "aes-256-cbc": "aes256", "aes256": "aes256", "aes256-cbc": "aes256", "aes-256": "aes256",
    "aes-128-gcm-16": "aes128gcm16", "aes128-gcm-16": "aes128gcm16", "aes-gcm-128": "aes128gcm16",
    "aes-256-gcm-16": "aes256gcm16", "aes256-gcm-16": "aes256gcm16", "aes-gcm-256": "aes256gcm16",
}
_INTEG = {
    "sha1": "sha1", "sha": "sha1", "sha-1": "sha1", "hmac-sha1-96": "sha1", "sha-hmac": "sha1", "esp-sha-hmac": "sha1",
    "sha2-256": "sha256", "sha256": "sha256", "sha-256": "sha256", "hmac-sha2-256-128": "sha256", "sha256-hmac": "sha256",
    "sha2-384": "sha384", "sha384": "sha384", "hmac-sha2-384-192": "sha384",
    "sha2-512": "sha512", "sha512": "sha512", "hmac-sha2-512-256": "sha512",
}


def _enc(s: str | None) -> str | None:
    return _ENC.get(s.strip().lower()) if s else None


def _integ(s: str | None) -> str | None:
    return _INTEG.get(s.strip().lower()) if s else None


def _group(s: str | None) -> int | None:
    """'group2', 'Group 2', 'modp1024', '2', '1024-bit' -> 2."""
    if not s:
        return None
    s = s.strip().lower()
    m = re.search(r"(\d+)", s)
    if s in cfgmod.DH_GROUPS:
        return cfgmod.DH_GROUPS[s]
    if m and "bit" in s:
        return {"768": 1, "1024": 2, "1536": 5, "2048": 14}.get(m.group(1))
    return int(m.group(1)) if m else None


def _intval(s: str | None) -> int | None:
    if s is None:
        return None
    m = re.search(r"\d+", s)
    return int(m.group(0)) if m else None


# ------------------------------------------------------------------------ detection


def detect_format(text: str) -> str:
    s = text.lstrip("\ufeff \t\r\n")
    if s.startswith("{") or s.startswith("["):
        return "json"
    if "<vpn_connection" in s or "<ipsec_tunnel" in s:
        return "xml"
    low = s.lower()
    if re.search(r"ipsec ike pre-shared-key \d+ text", low) or "tunnel select" in low:
        return "yamaha"
    if "crypto keyring" in low or "tunnel-group" in low or "crypto isakmp" in low or "crypto ikev1" in low:
        return "cisco"
    if re.search(r"pre-shared key\s*:", low) and "ipsec tunnel #" in low:
        return "generic"
    raise AwsImportError(
        "unrecognised input: expected the CustomerGatewayConfiguration XML, describe-vpn-connections JSON,"
        " or a Generic/Yamaha/Cisco configuration download from the AWS console"
    )


def parse_aws(text: str, fmt: str | None = None) -> list[ImportedVpn]:
    fmt = fmt or detect_format(text)
    if fmt == "json":
        return _parse_json(text)
    if fmt == "xml":
        return [_parse_xml(text)]
    if fmt == "generic":
        return [_parse_generic(text)]
    if fmt == "yamaha":
        return [_parse_yamaha(text)]
    if fmt == "cisco":
        return [_parse_cisco(text)]
    raise AwsImportError(f"unknown format {fmt!r}")


# ------------------------------------------------------------------------------ XML


def _parse_xml(text: str, fmt: str = "xml") -> ImportedVpn:
    s = text.strip().lstrip("\ufeff")
    try:
        root = ET.fromstring(s.encode("utf-8") if s.startswith("<?xml") else s)
    except ET.ParseError as e:
        raise AwsImportError(f"the XML is malformed or truncated ({e})") from None
    if root.tag != "vpn_connection":
        found = root.find(".//vpn_connection")
        if found is None:
            raise AwsImportError("no <vpn_connection> element in the XML")
        root = found

    def tx(el, path: str) -> str | None:
        if el is None:
            return None
        x = el.find(path)
        if x is None:
            return None
        v = "".join(x.itertext()).strip()
        return v or None

    vpn = ImportedVpn(fmt, vpn_id=root.get("id"), cgw_id=tx(root, "customer_gateway_id"),
                      vgw_id=tx(root, "vpn_gateway_id"), tgw_id=tx(root, "transit_gateway_id"))
    tunnels = root.findall("ipsec_tunnel")
    if not tunnels:
        raise AwsImportError("no <ipsec_tunnel> element in the XML (truncated?)")
    attrs = (tx(root, "vpn_connection_attributes") or "").lower()
    has_bgp = any(el.find(f"{side}/bgp") is not None for el in tunnels for side in ("customer_gateway", "vpn_gateway"))
    vpn.static = "nobgp" in attrs or not has_bgp
    for tag, key in (("ipv4_network_cidr_local", "LocalIpv4NetworkCidr"), ("ipv4_network_cidr_remote", "RemoteIpv4NetworkCidr"),
                     ("ipv6_network_cidr_local", "LocalIpv6NetworkCidr"), ("ipv6_network_cidr_remote", "RemoteIpv6NetworkCidr")):
        if tx(root, tag):
            vpn.selectors[key] = tx(root, tag)
    for i, el in enumerate(tunnels, 1):
        t = ImportedTunnel(i)
        cg, vg = el.find("customer_gateway"), el.find("vpn_gateway")
        t.cgw_outside = tx(cg, "tunnel_outside_address/ip_address") or tx(cg, "tunnel_outside_address")
        t.aws_outside = tx(vg, "tunnel_outside_address/ip_address") or tx(vg, "tunnel_outside_address")
        t.cgw_inside = tx(cg, "tunnel_inside_address/ip_address") or tx(cg, "tunnel_inside_ipv6_address/ip_address")
        t.aws_inside = tx(vg, "tunnel_inside_address/ip_address") or tx(vg, "tunnel_inside_ipv6_address/ip_address")
        v6 = ":" in (t.cgw_inside or "")
        t.prefixlen = _intval(
            tx(cg, "tunnel_inside_address/network_cidr") or tx(cg, "tunnel_inside_ipv6_address/network_cidr")
            or tx(cg, "tunnel_inside_ipv6_address/prefix_length")) or (126 if v6 else 30)
        t.local_asn = _intval(tx(cg, "bgp/asn"))
        t.remote_asn = _intval(tx(vg, "bgp/asn"))
        t.hold_time = _intval(tx(vg, "bgp/hold_time") or tx(cg, "bgp/hold_time"))
        ike, ipsec = el.find("ike"), el.find("ipsec")
        t.psk = tx(ike, "pre_shared_key")
        t.ike_enc = _enc(tx(ike, "encryption_protocol"))
        t.ike_integ = _integ(tx(ike, "authentication_protocol"))
        t.ike_dh = _group(tx(ike, "perfect_forward_secrecy"))
        t.ike_lifetime = _intval(tx(ike, "lifetime"))
        t.esp_enc = _enc(tx(ipsec, "encryption_protocol"))
        t.esp_integ = _integ(tx(ipsec, "authentication_protocol"))
        t.esp_pfs = _group(tx(ipsec, "perfect_forward_secrecy"))
        t.esp_lifetime = _intval(tx(ipsec, "lifetime"))
        t.mss = _intval(tx(ipsec, "tcp_mss_adjustment"))
        t.dpd_interval = _intval(tx(ipsec, "dead_peer_detection/delay") or tx(ipsec, "dead_peer_detection/interval"))
        t.dpd_retries = _intval(tx(ipsec, "dead_peer_detection/retry") or tx(ipsec, "dead_peer_detection/retries"))
        vpn.tunnels.append(t)
    return vpn


def _parse_json(text: str) -> list[ImportedVpn]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AwsImportError(f"the JSON is malformed or truncated ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and "VpnConnections" in data:
        conns = data["VpnConnections"]
    elif isinstance(data, dict) and "VpnConnection" in data:  # create-vpn-connection output
        conns = [data["VpnConnection"]]
    elif isinstance(data, list):
        conns = data
    elif isinstance(data, dict) and "CustomerGatewayConfiguration" in data:
        conns = [data]
    else:
        raise AwsImportError("JSON without \"VpnConnections\": expected `aws ec2 describe-vpn-connections` output")
    if not isinstance(conns, list) or not conns:
        raise AwsImportError("the JSON lists no VPN connection")
    out = []
    for k, c in enumerate(conns, 1):
        if not isinstance(c, dict):
            raise AwsImportError(f"VPN connection {k}: not a JSON object")
        xml = c.get("CustomerGatewayConfiguration")
        vid = c.get("VpnConnectionId") or f"#{k}"
        if not xml:
            raise AwsImportError(
                f"VPN connection {vid}: no CustomerGatewayConfiguration (it is only returned to the account"
                " owner, and not for deleted connections)"
            )
        try:
            v = _parse_xml(xml, "json")
        except AwsImportError as e:
            raise AwsImportError(f"VPN connection {vid}: {e}") from None
        v.vpn_id = v.vpn_id or c.get("VpnConnectionId")
        v.cgw_id = v.cgw_id or c.get("CustomerGatewayId")
        v.vgw_id = v.vgw_id or c.get("VpnGatewayId")
        v.tgw_id = v.tgw_id or c.get("TransitGatewayId")
        try:
            _json_options(v, c)
        except AwsImportError as e:
            raise AwsImportError(f"VPN connection {vid}: {e}") from None
        out.append(v)
    return out


#: the JSON's algorithm names -> cgwd's
_AWS_ENC = {"aes128": "aes128", "aes256": "aes256", "aes128-gcm-16": "aes128gcm16", "aes256-gcm-16": "aes256gcm16"}
_AWS_INTEG = {"sha1": "sha1", "sha2-256": "sha256", "sha2-384": "sha384", "sha2-512": "sha512"}


def _values(opt: dict, key: str) -> list | None:
    """An AWS list option: ``[{"Value": x}, ...]`` as the CLI prints it, or plain ``[x, ...]``."""
    raw = opt.get(key)
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise AwsImportError(f"{key} is not a list")
    return [x.get("Value") if isinstance(x, dict) else x for x in raw]


def _names(opt: dict, key: str, table: dict[str, str]) -> list[str] | None:
    vals = _values(opt, key)
    if vals is None:
        return None
    out = []
    for v in vals:
        name = table.get(str(v).strip().lower())
        if name is None:
            raise AwsImportError(f"{key} lists {v!r}, which cgwd does not know (known: {', '.join(k.upper() for k in table)})")
        out.append(name)
    return out


def _numbers(opt: dict, key: str) -> list[int] | None:
    vals = _values(opt, key)
    if vals is None:
        return None
    try:
        return [int(v) for v in vals]
    except (TypeError, ValueError):
        raise AwsImportError(f"{key} lists a value that is not a group number ({vals!r})") from None


def _opt_str(opt: dict, key: str) -> str | None:
    v = opt.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise AwsImportError(f"{key} is not a string ({type(v).__name__})")
    return v


def _opt_int(opt: dict, key: str) -> int | None:
    v = opt.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isdigit():
        raise AwsImportError(f"{key} is not a number ({v!r})")
    return int(v)


def _json_options(v: ImportedVpn, c: dict) -> None:
    """What describe-vpn-connections says beyond the XML: routing, families, and the real
    tunnel options (the XML carries AWS's minimum values only)."""
    opts = c.get("Options") or {}
    if not isinstance(opts, dict):
        raise AwsImportError("Options is not a JSON object")
    if opts.get("StaticRoutesOnly") is True:
        v.static = True
    elif opts.get("StaticRoutesOnly") is False:
        v.static = False
    routes = c.get("Routes") or []
    v.aws_routes = [r["DestinationCidrBlock"] for r in routes if isinstance(r, dict) and r.get("DestinationCidrBlock")
                    and r.get("State", "available") not in ("deleted", "deleting")]
    v.inside_version = (_opt_str(opts, "TunnelInsideIpVersion") or "").lower() or None
    if v.inside_version not in (None, "ipv4", "ipv6"):
        raise AwsImportError(f"TunnelInsideIpVersion {v.inside_version!r} (expected ipv4 or ipv6)")
    v.accelerated = opts.get("EnableAcceleration") is True
    v.outside_type = _opt_str(opts, "OutsideIpAddressType")
    for key in ("LocalIpv4NetworkCidr", "RemoteIpv4NetworkCidr", "LocalIpv6NetworkCidr", "RemoteIpv6NetworkCidr"):
        if _opt_str(opts, key):
            v.selectors[key] = opts[key]
    tops = opts.get("TunnelOptions") or []
    if not isinstance(tops, list) or not all(isinstance(x, dict) for x in tops):
        raise AwsImportError("Options.TunnelOptions is not a list of objects")
    by_outside = {t.aws_outside: t for t in v.tunnels}
    for k, opt in enumerate(tops):
        # match by the AWS outside address: the JSON and XML lists need not be in one order
        try:
            outside = _opt_str(opt, "OutsideIpAddress")
        except AwsImportError as e:
            raise AwsImportError(f"TunnelOptions[{k}]: {e}") from None
        t = by_outside.get(outside) or (v.tunnels[k] if k < len(v.tunnels) else None)
        if t is None:
            continue
        try:
            _tunnel_options(t, opt)
        except AwsImportError as e:
            raise AwsImportError(f"tunnel {t.index}: {e}") from None


def _tunnel_options(t: ImportedTunnel, opt: dict) -> None:
    psk = opt.get("PreSharedKey")
    if psk is not None and not isinstance(psk, str):
        raise AwsImportError("PreSharedKey is not a string")  # never shown: it may be the key
    if not t.psk and psk:
        t.psk = psk
    arn = _opt_str(opt, "PreSharedKeyArn")
    if arn and not t.psk:
        t.psk_arn = arn
    for key in ("TunnelInsideIpv6Cidr", "TunnelInsideCidr"):
        cidr = _opt_str(opt, key)
        v6 = key == "TunnelInsideIpv6Cidr"
        # the JSON's IPv6 inside CIDR wins over an XML that says none (or IPv4) for it
        if cidr and (not t.cgw_inside or (v6 and ":" not in t.cgw_inside)):
            try:
                net = ipaddress.ip_network(str(cidr), strict=False)
            except ValueError:
                raise AwsImportError(f"{key} {cidr!r} is not a prefix") from None
            t.cgw_inside, t.aws_inside, t.prefixlen = str(net[2]), str(net[1]), net.prefixlen
    versions = _values(opt, "IkeVersions")
    if versions is not None:
        vs = []
        for x in versions:
            m = re.fullmatch(r"ikev([12])", str(x).strip().lower())
            if not m:
                raise AwsImportError(f"IkeVersions lists {x!r} (expected ikev1 or ikev2)")
            vs.append(int(m.group(1)))
        t.ike_versions = tuple(sorted(set(vs)))
    sa = _opt_str(opt, "StartupAction")
    if sa is not None:
        if str(sa).lower() not in ("add", "start"):
            raise AwsImportError(f"StartupAction {sa!r} (expected add or start)")
        t.startup_action = str(sa).lower()
    t.p1_enc = _names(opt, "Phase1EncryptionAlgorithms", _AWS_ENC)
    t.p2_enc = _names(opt, "Phase2EncryptionAlgorithms", _AWS_ENC)
    t.p1_integ = _names(opt, "Phase1IntegrityAlgorithms", _AWS_INTEG)
    t.p2_integ = _names(opt, "Phase2IntegrityAlgorithms", _AWS_INTEG)
    t.p1_dh = _numbers(opt, "Phase1DHGroupNumbers") or _numbers(opt, "Phase1DhGroupNumbers")
    t.p2_dh = _numbers(opt, "Phase2DHGroupNumbers") or _numbers(opt, "Phase2DhGroupNumbers")
    t.ike_lifetime = _opt_int(opt, "Phase1LifetimeSeconds") or t.ike_lifetime
    t.esp_lifetime = _opt_int(opt, "Phase2LifetimeSeconds") or t.esp_lifetime
    t.rekey_margin = _opt_int(opt, "RekeyMarginTimeSeconds")
    t.rekey_fuzz = _opt_int(opt, "RekeyFuzzPercentage")
    t.replay_window = _opt_int(opt, "ReplayWindowSize")
    t.dpd_timeout = _opt_int(opt, "DpdTimeoutSeconds")
    act = _opt_str(opt, "DpdTimeoutAction")
    if act is not None:
        if str(act).lower() not in ("clear", "none", "restart"):
            raise AwsImportError(f"DpdTimeoutAction {act!r} (expected clear, none or restart)")
        t.dpd_timeout_action = str(act).lower()


# -------------------------------------------------------------------------- Generic

_IP = r"(\d{1,3}(?:\.\d{1,3}){3})"
#: an IPv4 or IPv6 address as the Generic download writes it (checked by ipaddress later)
_ADDR = r"(\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})"


def _split_tunnels(text: str, pattern: str) -> list[str]:
    parts = re.split(pattern, text, flags=re.I | re.M)
    return parts[1:] if len(parts) > 1 else []


def _ids(text: str, vpn: ImportedVpn) -> None:
    m = re.search(r"\b(vpn-[0-9a-z]+)\b", text)
    vpn.vpn_id = m.group(1) if m else None
    m = re.search(r"\b(cgw-[0-9a-z]+)\b", text)
    vpn.cgw_id = m.group(1) if m else None
    m = re.search(r"\b(vgw-[0-9a-z]+)\b", text)
    vpn.vgw_id = m.group(1) if m else None
    m = re.search(r"\b(tgw-[0-9a-z]+)\b", text)
    vpn.tgw_id = m.group(1) if m else None


def _parse_generic(text: str) -> ImportedVpn:
    vpn = ImportedVpn("generic")
    _ids(text, vpn)
    for i, sec in enumerate(_split_tunnels(text, r"IPSec Tunnel #\d+"), 1):
        t = ImportedTunnel(i)
        ike_part, _, rest = sec.partition("#2:")
        ipsec_part, _, rest2 = rest.partition("#3:")

        def f(label: str, where: str = sec) -> str | None:
            m = re.search(label + r"\s*:\s*(\S[^\r\n]*)", where, re.I)
            return m.group(1).strip() if m else None

        t.psk = f(r"Pre-Shared Key", ike_part)
        t.ike_integ = _integ(f(r"Authentication Algorithm", ike_part))
        t.ike_enc = _enc(f(r"Encryption Algorithm", ike_part))
        t.ike_lifetime = _intval(f(r"Lifetime", ike_part))
        t.ike_dh = _group(f(r"Diffie-Hellman", ike_part))
        t.esp_integ = _integ(f(r"Authentication Algorithm", ipsec_part))
        t.esp_enc = _enc(f(r"Encryption Algorithm", ipsec_part))
        t.esp_lifetime = _intval(f(r"Lifetime", ipsec_part))
        t.esp_pfs = _group(f(r"Perfect Forward Secrecy", ipsec_part))
        t.dpd_interval = _intval(f(r"DPD Interval"))
        t.dpd_retries = _intval(f(r"DPD Retries"))
        t.mss = _intval(f(r"TCP MSS Adjustment"))
        t.mtu = _intval(f(r"Tunnel interface MTU"))
        m = re.search(r"Outside IP(?:v6)? Addresses:?\s*-\s*Customer Gateway\s*:\s*" + _ADDR + r"\s*-\s*(?:Virtual Private|Transit) Gateway\s*:\s*" + _ADDR, sec, re.I)
        if m:
            t.cgw_outside, t.aws_outside = m.group(1), m.group(2)
        m = re.search(r"Inside IP(?:v6)? Addresses:?\s*-\s*Customer Gateway\s*:\s*" + _ADDR + r"/(\d+)\s*-\s*(?:Virtual Private|Transit) Gateway\s*:\s*" + _ADDR, sec, re.I)
        if m:
            t.cgw_inside, t.prefixlen, t.aws_inside = m.group(1), int(m.group(2)), m.group(3)
        m = re.search(r"IKE version\s*:\s*IKEv([12])\b", ike_part, re.I)
        if m:
            t.ike_versions = (int(m.group(1)),)
        t.local_asn = _intval(f(r"Customer Gateway ASN"))
        t.remote_asn = _intval(f(r"(?:Virtual Private|Transit)\s+Gateway\s+ASN"))
        t.hold_time = _intval(f(r"Neighbor Hold Time"))
        if re.search(r"Static Routing Configuration", sec, re.I) and not re.search(r"Border Gateway Protocol", sec, re.I):
            vpn.static = True
        vpn.tunnels.append(t)
    if not vpn.tunnels:
        raise AwsImportError("no 'IPSec Tunnel #1' section found (truncated?)")
    return vpn


# --------------------------------------------------------------------------- Yamaha


def _mask_to_len(mask: str | None) -> int:
    if not mask:
        return 30
    if mask.isdigit():
        return int(mask)
    try:
        return IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return 30


def _parse_yamaha(text: str) -> ImportedVpn:
    vpn = ImportedVpn("yamaha")
    _ids(text, vpn)
    # drop comment lines so the template's examples are not read as settings
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    body = "\n".join(lines)
    m = re.search(r"^\s*bgp autonomous-system\s+(\d+)", body, re.M)
    local_asn = int(m.group(1)) if m else None
    neighbors = re.findall(r"^\s*bgp neighbor\s+\d+\s+(\d+)\s+" + _IP + r"([^\n]*)", body, re.M)
    # Operators append lines like `tunnel select 1` / `tunnel name "..."` after the download
    # (seed 000 does): every block selecting the same tunnel number describes one tunnel.
    by_num: dict[str, list[str]] = {}
    for sec in _split_tunnels(body, r"^\s*tunnel select (?=\d)"):
        mnum = re.match(r"(\d+)", sec)
        if mnum:
            by_num.setdefault(mnum.group(1), []).append(sec)
    k = 0
    for sec in ("\n".join(parts) for parts in by_num.values()):
        if re.search(r"tunnel encapsulation l2tp", sec):
            continue  # someone's remote-access tunnel, not AWS
        k += 1
        t = ImportedTunnel(k)
        m = re.search(r"ipsec ike pre-shared-key\s+\d+\s+text\s+(\S+)", sec)
        t.psk = m.group(1) if m else None
        m = re.search(r"ipsec ike local address\s+\d+\s+" + _IP, sec)
        t.cgw_outside = m.group(1) if m else None
        m = re.search(r"ipsec ike remote address\s+\d+\s+" + _IP, sec)
        t.aws_outside = m.group(1) if m else None
        m = re.search(r"ip tunnel address\s+" + _IP + r"(?:/(\S+))?", sec)
        if m:
            t.cgw_inside, t.prefixlen = m.group(1), _mask_to_len(m.group(2))
        m = re.search(r"ip tunnel remote address\s+" + _IP, sec)
        t.aws_inside = m.group(1) if m else None
        m = re.search(r"ipsec ike encryption\s+\d+\s+(\S+)", sec)
        t.ike_enc = _enc(m.group(1)) if m else None
        m = re.search(r"ipsec ike hash\s+\d+\s+(\S+)", sec)
        t.ike_integ = _integ(m.group(1)) if m else None
        m = re.search(r"ipsec ike group\s+\d+\s+(\S+)", sec)
        t.ike_dh = _group(m.group(1)) if m else None
        m = re.search(r"ipsec ike duration isakmp-sa\s+\d+\s+(\d+)", sec)
        t.ike_lifetime = int(m.group(1)) if m else None
        m = re.search(r"ipsec sa policy\s+\d+\s+\d+\s+esp\s+(\S+)\s+(\S+)", sec)
        if m:
            t.esp_enc, t.esp_integ = _enc(m.group(1)), _integ(m.group(2))
        m = re.search(r"ipsec ike duration ipsec-sa\s+\d+\s+(\d+)", sec)
        t.esp_lifetime = int(m.group(1)) if m else None
        m = re.search(r"ipsec ike pfs\s+\d+\s+on", sec)
        t.esp_pfs = t.ike_dh if m else None
        # `dpd` (IKEv1) or `rfc4306` (IKEv2 liveness), then interval and count (seed 002)
        m = re.search(r"ipsec ike keepalive use\s+\d+\s+on\s+(?:dpd|rfc4306)\s+(\d+)\s+(\d+)", sec)
        if m:
            t.dpd_interval, t.dpd_retries = int(m.group(1)), int(m.group(2))
        m = re.search(r"ipsec ike version\s+\d+\s+([12])\b", sec)
        if m:
            t.ike_versions = (int(m.group(1)),)
        m = re.search(r"ip tunnel tcp mss limit\s+(\d+)", sec)
        t.mss = int(m.group(1)) if m else None
        t.local_asn = local_asn
        for asn, peer, rest in neighbors:
            if peer == t.aws_inside:
                t.remote_asn = int(asn)
                mh = re.search(r"hold-time=(\d+)", rest)
                t.hold_time = int(mh.group(1)) if mh else None
        vpn.tunnels.append(t)
    if not vpn.tunnels:
        raise AwsImportError("no 'tunnel select N' section found (truncated?)")
    # no BGP at all: a static VPN connection (seed 002); `ip route NET gateway tunnel N` lines
    # the operator added name its VPC side
    vpn.static = local_asn is None and not neighbors
    aws_tunnels = set(by_num) - {n for n, parts in by_num.items() if any("tunnel encapsulation l2tp" in p for p in parts)}
    for net, rest in re.findall(r"^\s*ip route\s+(\S+)\s+gateway\s+(tunnel\s+\d+[^\n]*)", body, re.M):
        if set(re.findall(r"tunnel\s+(\d+)", rest)) & aws_tunnels and net != "default":
            vpn.routes.append(net)
    return vpn


# ---------------------------------------------------------------------------- Cisco


def _parse_cisco(text: str) -> ImportedVpn:
    vpn = ImportedVpn("cisco")
    _ids(text, vpn)
    lines = [ln for ln in text.splitlines() if not re.match(r"\s*!\s*(?:[A-Za-z]|$)", ln) or "IPSec Tunnel #" in ln]
    body = " ".join(" ".join(lines).split())
    sections = _split_tunnels(body, r"IPSec Tunnel #\d+")
    if not sections:
        sections = _split_tunnels(body, r"(?=crypto keyring |tunnel-group \S+ type)")
    m = re.search(r"router bgp (\d+)", body)
    local_asn = int(m.group(1)) if m else None
    for i, sec in enumerate(sections, 1):
        t = ImportedTunnel(i)
        m = re.search(r"pre-shared-key address " + _IP + r"(?: \S+)? key (\S+)", sec)
        if m:
            t.aws_outside, t.psk = m.group(1), m.group(2)
        else:
            m = re.search(r"tunnel-group " + _IP + r" ipsec-attributes.*?ikev1 pre-shared-key (\S+)", sec)
            if m:
                t.aws_outside, t.psk = m.group(1), m.group(2)
        if not t.psk:  # IKEv2: IOS keyring peers, ASA remote/local authentication
            m = (re.search(r"crypto ikev2 keyring \S+ peer \S+ address " + _IP + r"(?: \S+)? pre-shared-key (?:local |remote )?(\S+)", sec)
                 or re.search(r"tunnel-group " + _IP + r" ipsec-attributes.*?ikev2 remote-authentication pre-shared-key (\S+)", sec))
            if m:
                t.aws_outside, t.psk = m.group(1), m.group(2)
        if "crypto ikev2" in sec or "ikev2 remote-authentication" in sec:
            t.ike_versions = (2,)
        if not t.aws_outside:
            m = re.search(r"(?:tunnel destination|set peer) " + _IP, sec)
            t.aws_outside = m.group(1) if m else None
        m = re.search(r"local-address " + _IP, sec)
        t.cgw_outside = m.group(1) if m else None
        m = re.search(r"interface Tunnel\S*(?: [^!]*?)? ip address (169\.254\.\d+\.\d+) (\d+\.\d+\.\d+\.\d+)", sec)
        if m:
            t.cgw_inside, t.prefixlen = m.group(1), _mask_to_len(m.group(2))
        m = re.search(r"neighbor (169\.254\.\d+\.\d+) remote-as (\d+)", sec)
        if m:
            t.aws_inside, t.remote_asn = m.group(1), int(m.group(2))
        m = re.search(r"router bgp (\d+)", sec)
        t.local_asn = int(m.group(1)) if m else local_asn
        m = re.search(r"neighbor \S+ timers (\d+) (\d+)", sec)
        t.hold_time = int(m.group(2)) if m else None
        m = re.search(r"\bencryption (aes(?:-256|-128| 256| 128)?)\b", sec)
        t.ike_enc = _enc(m.group(1).replace(" ", "-")) if m else None
        m = re.search(r"\bhash (sha\S*)", sec)
        t.ike_integ = _integ(m.group(1)) if m else None
        m = re.search(r"\bgroup (\d+)", sec)
        t.ike_dh = int(m.group(1)) if m else None
        m = re.search(r"crypto (?:isakmp|ikev1) policy \d+ (?:(?!exit).)*?\blifetime (\d+)", sec)
        t.ike_lifetime = int(m.group(1)) if m else None
        m = re.search(r"crypto ipsec transform-set \S+ esp-(aes(?: \d+)?) esp-(sha\S*)", sec)
        if m:
            t.esp_enc = _enc(m.group(1).replace(" 256", "-256-cbc"))
            t.esp_integ = _integ(m.group(2).replace("-hmac", ""))
        m = re.search(r"set pfs group(\d+)", sec)
        t.esp_pfs = int(m.group(1)) if m else None
        m = re.search(r"set security-association lifetime seconds (\d+)", sec)
        t.esp_lifetime = int(m.group(1)) if m else None
        m = re.search(r"ip tcp adjust-mss (\d+)", sec)
        t.mss = int(m.group(1)) if m else None
        # IOS: `crypto isakmp keepalive SECONDS [RETRY-SECONDS]`; the second number is the
        # retry *interval*, not a count: reading it as retries would wait 100 s instead of
        # AWS's 30 s before declaring the peer dead.  The count stays AWS's default (3).
        m = re.search(r"crypto isakmp keepalive (\d+)", sec) or re.search(r"isakmp keepalive threshold (\d+)", sec)
        if m:
            t.dpd_interval = int(m.group(1))
        vpn.tunnels.append(t)
    if not vpn.tunnels:
        raise AwsImportError("no 'IPSec Tunnel #1' section or crypto keyring found (truncated?)")
    vpn.static = local_asn is None and "router bgp" not in body
    for net, mask in re.findall(r"\bip route " + _IP + r" (\d+\.\d+\.\d+\.\d+) Tunnel\d+", body):
        vpn.routes.append(str(IPv4Network(f"{net}/{mask}", strict=False)))
    vpn.routes = list(dict.fromkeys(vpn.routes))
    return vpn


# ------------------------------------------------------------------------- checking


@dataclass
class _Routing:
    """What the operator adds to a download: how the VPN connection routes."""

    local_address: str | None = None
    advertise: list[str] = field(default_factory=list)
    static_routes: list[str] = field(default_factory=list)
    ike_version: int | None = None  # --ike-version: None = what the download says


def _inner_family(vpn: ImportedVpn) -> int:
    if vpn.inside_version in ("ipv4", "ipv6"):
        return int(vpn.inside_version[-1])
    a = next((_ip(t.cgw_inside) for t in vpn.tunnels if _ip(t.cgw_inside)), None)
    return a.version if a is not None else 4


def _vid(vpn: ImportedVpn) -> str:
    return vpn.vpn_id or "this VPN connection"


def _check(vpn: ImportedVpn, local_address: str | None, opts: _Routing | None = None) -> list[str]:
    opts = opts or _Routing(local_address=local_address)
    problems = []
    if not vpn.tunnels:
        problems.append("no tunnel found")
    problems += _check_routing(vpn, opts)
    for t in vpn.tunnels:
        p = f"tunnel {t.index}"
        if not t.psk and t.psk_arn:
            problems.append(
                f"{p}: the pre-shared key is kept in AWS Secrets Manager ({t.psk_arn}), not in this download:"
                " read it with `aws secretsmanager get-secret-value --secret-id ARN`, write it to a file of"
                " mode 0600 and set psk_file = \"/etc/cgwd/<tunnel>.psk\" in the tunnel instead of psk")
        elif not t.psk:
            problems.append(f"{p}: no pre-shared key found")
        elif cfgmod.check_psk(t.psk):
            problems.append(f"{p}: the pre-shared key is not an AWS key (it {cfgmod.PSK_RULE}): is the file a template with placeholders?")
        needed = [("aws_outside", "AWS outside (tunnel endpoint) address"), ("cgw_inside", "customer gateway inside address")]
        if not vpn.static:
            needed.append(("remote_asn", "AWS-side BGP ASN"))
        for attr, what in needed:
            if getattr(t, attr) in (None, ""):
                problems.append(f"{p}: no {what} found")
        if not t.cgw_outside and not opts.local_address:
            problems.append(f"{p}: no customer gateway outside address found (give --local-address)")
        if not t.local_asn and not vpn.static:
            problems.append(f"{p}: no customer gateway BGP ASN found")
        problems += _check_addresses(vpn, t, opts)
        problems += _plan(t, opts.ike_version)[1]
    return problems


def _check_routing(vpn: ImportedVpn, opts: _Routing) -> list[str]:
    out = []
    if vpn.static:
        if not (opts.static_routes or vpn.routes):
            out.append(f"{_vid(vpn)} uses static routing (a static VPN connection, no BGP): give the VPC's CIDRs to"
                       " route into its tunnels with --static-route CIDR (repeatable), e.g. --static-route 10.0.0.0/16")
        if opts.advertise:
            out.append(_advertise_on_static(vpn))
    elif opts.static_routes:
        out.append(f"--static-route: {_vid(vpn)} uses BGP (dynamic routing): the VPC's routes come from BGP; drop --static-route")
    for key, val in vpn.selectors.items():
        if val not in ("0.0.0.0/0", "::/0"):
            out.append(f"{_vid(vpn)} has {key} = {val}: cgwd negotiates 0.0.0.0/0 (::/0) traffic selectors only,"
                       f" as a route-based gateway; set it to {'::/0' if 'Ipv6' in key else '0.0.0.0/0'} with"
                       " `aws ec2 modify-vpn-connection-options` and route with static_routes or BGP")
    return out


def _advertise_on_static(vpn: ImportedVpn) -> str:
    theirs = f" ({', '.join(vpn.aws_routes)})" if vpn.aws_routes else ""
    return (f"--advertise: {_vid(vpn)} uses static routing (no BGP): nothing is announced, AWS routes to"
            f" on-prem the prefixes configured as its static routes{theirs}")


def _ip(v: str | None):
    try:
        return ipaddress.ip_address(v) if v else None
    except ValueError:
        return None


def _check_addresses(vpn: ImportedVpn, t: ImportedTunnel, opts: _Routing) -> list[str]:
    p = f"tunnel {t.index}"
    out = []
    for attr in ("cgw_outside", "aws_outside", "cgw_inside", "aws_inside"):
        v = getattr(t, attr)
        if v and _ip(v) is None:
            out.append(f"{p}: {attr.replace('_', ' ')} {v!r} is not an IPv4 address" if ":" not in v
                       else f"{p}: {attr.replace('_', ' ')} {v!r} is not an IPv6 address")
    outer = [a for a in (_ip(t.cgw_outside), _ip(t.aws_outside), _ip(opts.local_address)) if a is not None]
    aws_out = _ip(t.aws_outside)
    if aws_out is not None and vpn.outside_type and (aws_out.version == 6) != (vpn.outside_type.lower() == "ipv6"):
        out.append(f"{p}: AWS outside address {aws_out} does not match the VPN connection's OutsideIpAddressType {vpn.outside_type}")
    if len({a.version for a in outer}) > 1:
        out.append(f"{p}: the outside addresses mix IPv4 and IPv6 ({', '.join(str(a) for a in outer)}):"
                   " IKE runs over one family (OutsideIpAddressType)")
    cgw, aws = _ip(t.cgw_inside), _ip(t.aws_inside)
    if cgw is not None:
        want = 6 if vpn.inside_version == "ipv6" else 4 if vpn.inside_version == "ipv4" else cgw.version
        try:
            net = ipaddress.ip_interface(f"{cgw}/{t.prefixlen}").network
        except ValueError:
            return out + [f"{p}: inside prefix length /{t.prefixlen} does not fit {cgw}"]
        if cgw.version != want:
            out.append(f"{p}: inside address {cgw} is IPv{cgw.version} but the VPN connection's TunnelInsideIpVersion is ipv{want}")
        elif cgw != net[2] or (aws is not None and aws != net[1]):
            out.append(f"{p}: inside addresses {cgw} (us) and {aws} (AWS) in {net}: cgwd expects AWS at {net[1]} and"
                       f" the customer gateway at {net[2]}")
    return out


def _proposal(enc: str | None, integ: str | None, dh: int | None, ike: bool) -> str:
    enc = enc or "aes128"
    parts = [enc]
    if not enc.endswith("gcm16"):
        parts.append(integ or "sha1")
    elif ike and integ:  # an IKEv2 GCM IKE SA: the download's integrity algorithm is its PRF
        parts.append("prf" + integ)
    # a download that does not state the group gets AWS's default (group 2, PFS on)
    parts.append(cfgmod.DH_NAMES.get(dh if dh is not None else 2, "modp1024"))
    return "-".join(parts)


#: more proposals than this make the first IKE message large: say so (all are still written)
MANY_PROPOSALS = 16


@dataclass
class _TunnelPlan:
    ike_version: int
    startup_action: str
    ike_proposals: list[str]
    esp_proposals: list[str]
    dpd_retries: int | None
    notes: list[str]


def _combine(encs: list[str], integs: list[str], groups: list[int | None], kind: str, version: int) -> list[str]:
    """Every combination, in AWS's order (encryption, then integrity, then group)."""
    out = []
    for enc in encs:
        gcm = enc.endswith("gcm16")
        if kind == "ike" and gcm and version == 1:
            continue  # AES-GCM protects only IKEv2 IKE SAs
        for integ in integs:
            for g in groups:
                dh = [cfgmod.DH_NAMES.get(g, f"group{g}")] if g is not None else []
                if gcm and kind == "ike":
                    parts = [enc, "prf" + integ, *dh]  # IKEv2: the integrity list doubles as the PRFs
                elif gcm:
                    parts = [enc, *dh]
                else:
                    parts = [enc, integ, *dh]
                out.append("-".join(parts))
    return list(dict.fromkeys(out))


def _plan(t: ImportedTunnel, forced: int | None) -> tuple[_TunnelPlan | None, list[str]]:
    """The tunnel's IKE version, startup action and proposals, or the problems in the way."""
    p = f"tunnel {t.index}"
    problems: list[str] = []
    notes: list[str] = []
    if forced is not None:
        if t.ike_versions and forced not in t.ike_versions:
            only = " and ".join(f"IKEv{v}" for v in t.ike_versions)
            problems.append(f"{p}: --ike-version {forced}: AWS allows only {only} on this tunnel (IkeVersions)")
        version = forced
    else:
        version = 2 if 2 in t.ike_versions else 1
    startup = t.startup_action or "add"
    if startup == "start" and version != 2:
        problems.append(f"{p}: AWS initiates this tunnel (StartupAction start), which cgwd answers with IKEv2 only:"
                        " allow IKEv2 on it (IkeVersions) or set StartupAction add")
    if startup == "start" and t.dpd_timeout_action not in (None, "restart"):
        notes.append(f"{p}: AWS initiates it (StartupAction start) and cgwd only answers, but AWS's DpdTimeoutAction"
                     f" is {t.dpd_timeout_action!r}: with 'restart' AWS brings the tunnel back after a DPD timeout")
    ike_groups = t.p1_dh or [t.ike_dh if t.ike_dh is not None else 2]
    esp_groups = t.p2_dh or [t.esp_pfs if t.esp_pfs is not None else 2]
    if t.p1_enc or t.p1_integ or t.p1_dh:
        ike = _combine(t.p1_enc or [t.ike_enc or "aes128"], t.p1_integ or [t.ike_integ or "sha1"], ike_groups, "ike", version)
    else:
        ike = [_proposal(t.ike_enc, t.ike_integ, t.ike_dh, True)]
    if t.p2_enc or t.p2_integ or t.p2_dh:
        esp = _combine(t.p2_enc or [t.esp_enc or "aes128"], t.p2_integ or [t.esp_integ or "sha1"], esp_groups, "esp", version)
    else:
        esp = [_proposal(t.esp_enc, t.esp_integ, t.esp_pfs, False)]
    if not ike:
        problems.append(f"{p}: AWS allows only AES-GCM in phase 1 (Phase1EncryptionAlgorithms), which IKEv1 cannot use: allow IKEv2 on the tunnel")
    for kind, props in (("ike", ike), ("esp", esp)):
        for text in props:
            try:
                cfgmod.parse_proposal(text, kind, version)
            except ValueError as e:
                problems.append(f"{p}: {'phase 1' if kind == 'ike' else 'phase 2'}: {e}")
                break
        if len(props) > MANY_PROPOSALS:
            notes.append(f"{p}: AWS allows {len(props)} {'phase 1' if kind == 'ike' else 'phase 2'} combinations; all are"
                         " offered in AWS's order, which makes a large first message: narrow the tunnel options on"
                         f" AWS's side or trim {kind}_proposals")
    retries = None
    if t.dpd_timeout:
        retries = max(1, math.ceil(t.dpd_timeout / (t.dpd_interval or 10)))
    if problems:
        return None, problems
    return _TunnelPlan(version, startup, ike, esp, retries, notes), []


# -------------------------------------------------------------------------- emitting


def toml_string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _val(v, indent: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)) and len(v) > 4 and indent:  # one per line
        return "[\n" + "".join(f"{indent}    {_val(x)},\n" for x in v) + f"{indent}]"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return toml_string(str(v))


def _short_id(vpn_id: str | None) -> str | None:
    if not vpn_id:
        return None
    h = re.sub(r"[^0-9a-z]", "", vpn_id.lower().removeprefix("vpn-"))
    return h[-6:] if len(h) >= 4 else None


def render_vpn(
    vpn: ImportedVpn,
    *,
    local_address: str | None = None,
    advertise: list[str] | None = None,
    name: str | None = None,
    tunnel_names: list[str] | None = None,
    static_routes: list[str] | None = None,
    ike_version: int | None = None,
) -> str:
    """The ``[[vpn]]`` block (with its tunnels) for one imported connection.

    ``static_routes``: the VPC's CIDRs for a static VPN connection (``--static-route``);
    ``ike_version``: 1 or 2 for every tunnel (``--ike-version``), else what the download says.
    """
    opts = _Routing(local_address, list(advertise or []), list(static_routes or []), ike_version)
    problems = _check(vpn, local_address, opts)
    if problems:
        raise AwsImportError("; ".join(problems))
    t0 = vpn.tunnels[0]
    public = t0.cgw_outside or local_address
    local = local_address or public
    vname = name or vpn.vpn_id or "vpn1"
    short = _short_id(vpn.vpn_id)
    if tunnel_names is None:
        base = re.sub(r"[^A-Za-z0-9_.-]", "", name)[:9] if name else short
        tunnel_names = [f"{base}-{t.index}" if base else f"tun{t.index}" for t in vpn.tunnels]
    lines = []
    ids = [x for x in (vpn.vpn_id, vpn.cgw_id, vpn.vgw_id, vpn.tgw_id) if x]
    lines.append(f"# AWS VPN connection imported from the {FORMAT_NAMES.get(vpn.fmt, vpn.fmt)}" + (f" ({', '.join(ids)})" if ids else ""))
    lines.append("[[vpn]]")
    lines.append(f"name = {_val(vname)}")
    lines.append(f"local_address = {_val(local)}" + ("   # this box (behind NAT)" if local != public else ""))
    lines.append(f"public_address = {_val(public)}" + ("   # the customer gateway address AWS knows" if local != public else ""))
    if vpn.static:
        routes = list(opts.static_routes or vpn.routes)
        lines.append('routing = "static"                 # no BGP: AWS routes its static routes to us, we route these to AWS')
        lines.append(f"static_routes = {_val(routes)}" + ("   # the VPC's CIDRs" if opts.static_routes else "   # from the download's routes"))
        if vpn.aws_routes:
            lines.append(f"# AWS routes these on-prem prefixes into the tunnels (the VPN connection's static routes): {', '.join(vpn.aws_routes)}")
    else:
        lines.append(f"local_asn = {t0.local_asn}")
        lines.append(f"remote_asn = {t0.remote_asn}")
        lines.append(f"advertise = {_val(list(advertise or []))}" + ("" if advertise else "   # on-prem prefixes to announce, e.g. [\"10.200.0.0/24\"]"))
    lines.append(f"gateway_type = {_val(vpn.gateway_type)}")
    for t, tname in zip(vpn.tunnels, tunnel_names):
        plan, _ = _plan(t, ike_version)
        assert plan is not None  # _check reported every problem above
        inside = ipaddress.ip_interface(f"{t.cgw_inside}/{t.prefixlen}").network
        lines.append("")
        lines.append("  [[vpn.tunnel]]")
        lines.append(f"  name = {_val(tname)}")
        lines.append(f"  remote_address = {_val(t.aws_outside)}")
        lines.append(f"  psk = {_val(t.psk)}")
        lines.append(f"  inside_cidr = {_val(str(inside))}" + (f"   # AWS {t.aws_inside}, us {t.cgw_inside}" if t.aws_inside else ""))
        if t.cgw_outside and local_address and t.cgw_outside != public:
            lines.append(f"  public_address = {_val(t.cgw_outside)}")
        if vpn.accelerated:
            lines.append('  nat_traversal = "force"          # an accelerated VPN connection: AWS wants UDP 4500 (NAT-T) always')
        if plan.ike_version == 2:
            lines.append("  ike_version = 2")
        if plan.startup_action == "start":
            lines.append('  startup_action = "start"         # AWS initiates; cgwd answers')
        lines.append(f"  ike_proposals = {_val(plan.ike_proposals, '  ')}")
        if t.ike_lifetime:
            lines.append(f"  ike_lifetime = {t.ike_lifetime}")
        lines.append(f"  esp_proposals = {_val(plan.esp_proposals, '  ')}")
        if t.esp_lifetime:
            lines.append(f"  esp_lifetime = {t.esp_lifetime}")
        for key, v in (("rekey_margin", t.rekey_margin), ("rekey_fuzz", t.rekey_fuzz), ("replay_window", t.replay_window)):
            if v is not None:
                lines.append(f"  {key} = {v}")
        if t.dpd_interval:
            lines.append(f"  dpd_interval = {t.dpd_interval}")
        if plan.dpd_retries or t.dpd_retries:
            lines.append(f"  dpd_retries = {plan.dpd_retries or t.dpd_retries}"
                         + (f"   # AWS's DPD timeout {t.dpd_timeout} s" if plan.dpd_retries else ""))
        if t.dpd_timeout_action:
            lines.append(f"  # AWS's DPD timeout action: {t.dpd_timeout_action}")
        if t.hold_time and not vpn.static:
            lines.append(f"  hold_time = {t.hold_time}")
        if t.mtu:
            # not pinned: the data path sets the MTU from the negotiated transform and NAT-T as
            # AWS's table says (the download's one figure, 1436, is 1504-byte packets with NAT-T
            # and AES-CBC/SHA-1)
            lines.append(f"  # the download says MTU {t.mtu}; cgwd follows the negotiated transform (AWS's table)")
        if t.mss and inside.version == 6 and t.mss == cfgmod.DEFAULT_MSS[4]:
            lines.append(f"  mss = {cfgmod.DEFAULT_MSS[6]}   # the download says {t.mss}, the IPv4 value: IPv6 headers take 20 bytes more")
        elif t.mss:
            lines.append(f"  mss = {t.mss}")
    return "\n".join(lines) + "\n"


def notes_for(vpns: list[ImportedVpn], ike_version: int | None = None) -> list[str]:
    """Operator notes about an import that succeeded (no secrets)."""
    out = []
    for v in vpns:
        for t in v.tunnels:
            plan, _ = _plan(t, ike_version)
            if plan is not None:
                out += [f"{v.vpn_id}: {n}" if v.vpn_id and len(vpns) > 1 else n for n in plan.notes]
    return out


HEADER = """\
# cgwd configuration, generated by `cgwctl import aws`.
# It contains pre-shared keys: keep it mode 0600.  Check it with `cgwctl config check FILE`.

[daemon]
socket = "/run/cgwd/cgwd.sock"
log_level = "info"
datapath = "auto"
"""


def render_config(vpns: list[ImportedVpn], **kw) -> str:
    blocks = []
    names = kw.pop("name", None)
    for k, v in enumerate(vpns):
        nm = names if names and len(vpns) == 1 else (f"{names}-{k + 1}" if names else None)
        blocks.append(render_vpn(v, name=nm, **kw))
    return HEADER + "\n" + "\n".join(blocks)


def merge_config(existing_text: str, existing_source: str, new_blocks: str) -> str:
    """Append ``new_blocks`` to ``existing_text`` (kept byte for byte) after checking for clashes."""
    try:
        old = cfgmod.parse_config(existing_text, source=existing_source)
    except cfgmod.ConfigError as e:
        raise AwsImportError(f"{existing_source} is not a valid cgwd config; fix it first:\n" + "\n".join(str(x) for x in e.errors)) from None
    try:
        new = cfgmod.parse_config(new_blocks, source="<import>")
    except cfgmod.ConfigError as e:
        raise AwsImportError("the imported configuration does not validate: " + "; ".join(e2.message for e2 in e.errors)) from None
    clashes = []
    old_t = {t.name: t for t in old.tunnels}
    old_v = {v.name for v in old.vpns}
    for v in new.vpns:
        if v.name in old_v:
            clashes.append(f"a VPN connection named {v.name!r} is already in {existing_source} (use --name)")
    for t in new.tunnels:
        if t.name in old_t:
            clashes.append(f"tunnel name {t.name!r} is already used in {existing_source} (use --name)")
        for o in old.tunnels:
            if t.inside_cidr.version == o.inside_cidr.version and t.inside_cidr.overlaps(o.inside_cidr):
                clashes.append(f"inside CIDR {t.inside_cidr} of the new tunnel {t.name!r} is already used by tunnel {o.name!r}")
            if t.remote_address == o.remote_address and t.local_address == o.local_address:
                clashes.append(f"AWS endpoint {t.remote_address} is already the peer of tunnel {o.name!r}: this VPN connection is already configured")
    if clashes:
        raise AwsImportError("; ".join(dict.fromkeys(clashes)))
    sep = "" if existing_text.endswith("\n\n") else ("\n" if existing_text.endswith("\n") else "\n\n")
    merged = existing_text + sep + new_blocks
    try:
        cfgmod.parse_config(merged, source="<merged>")
    except cfgmod.ConfigError as e:
        raise AwsImportError("the merged configuration does not validate: " + "; ".join(str(x) for x in e.errors)) from None
    return merged


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cgwd-import-", dir=d)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class ImportResult:
    fmt: str
    text: str  # the complete config (merged if --merge)
    vpns: list[ImportedVpn]
    summary: list[str]  # lines for the operator (no secrets)
    notes: list[str] = field(default_factory=list)  # things to know about the result (no secrets)


def import_aws(
    text: str,
    *,
    local_address: str | None = None,
    advertise: list[str] | None = None,
    name: str | None = None,
    merge_text: str | None = None,
    merge_source: str = "<existing>",
    static_routes: list[str] | None = None,
    ike_version: int | None = None,
) -> ImportResult:
    """Import ``text`` (any format :func:`detect_format` knows) into a complete config.

    ``advertise`` goes to BGP VPN connections, ``static_routes`` (the VPC's CIDRs) to static
    ones; ``ike_version`` (1 or 2) overrides what the download says for every tunnel.
    """
    if not text.strip():
        raise AwsImportError("the input is empty")
    if local_address:
        try:
            ipaddress.ip_address(local_address)
        except ValueError:
            if ":" in local_address:
                raise AwsImportError(f"--local-address {local_address!r} is not an IPv6 address") from None
            raise AwsImportError(f"--local-address {local_address!r} is not an IPv4 address") from None
    for flag, nets in (("--advertise", advertise), ("--static-route", static_routes)):
        for a in nets or []:
            try:
                ipaddress.ip_network(a)
            except ValueError:
                if ":" in a:
                    raise AwsImportError(f"{flag} {a!r} is not an IPv6 prefix like 2001:db8:200::/48") from None
                raise AwsImportError(f"{flag} {a!r} is not an IPv4 prefix like 10.200.0.0/24") from None
    if ike_version not in (None, 1, 2):
        raise AwsImportError(f"--ike-version must be 1 or 2 (got {ike_version!r})")
    fmt = detect_format(text)
    vpns = parse_aws(text, fmt)
    problems = []
    if static_routes and not any(v.static for v in vpns):
        problems.append(f"--static-route: {_vid(vpns[0]) if len(vpns) == 1 else 'no VPN connection here'} uses BGP"
                        " (dynamic routing): the VPC's routes come from BGP; drop --static-route")
    if advertise and vpns and all(v.static for v in vpns):
        problems.append(_advertise_on_static(vpns[0]) if len(vpns) == 1
                        else "--advertise: every VPN connection here is static: nothing is announced")
    # each prefix goes to the VPN connections of its routing mode and family (a dual-stack site
    # imports its IPv4 and IPv6 connections at once); a prefix no connection can take is an error
    fam = {id(v): _inner_family(v) for v in vpns}
    opts = {}
    for v in vpns:
        several = len({fam[id(w)] for w in vpns}) > 1
        adv = [a for a in advertise or [] if not several or ipaddress.ip_network(a).version == fam[id(v)]]
        srt = [a for a in static_routes or [] if not several or ipaddress.ip_network(a).version == fam[id(v)]]
        opts[id(v)] = _Routing(local_address, [] if v.static else adv, srt if v.static else [], ike_version)
    for flag, nets in (("--advertise", advertise), ("--static-route", static_routes)):
        for a in nets or []:
            version = ipaddress.ip_network(a).version
            if len(vpns) > 1 and version not in fam.values():
                problems.append(f"{flag} {a} is IPv{version} but no VPN connection here carries IPv{version}")
    for v in vpns:
        pre = f"{v.vpn_id}: " if len(vpns) > 1 and v.vpn_id else ""
        problems += [pre + p for p in _check(v, local_address, opts[id(v)])]
    if problems:
        raise AwsImportError("; ".join(dict.fromkeys(problems)))
    blocks = []
    for k, v in enumerate(vpns):
        o = opts[id(v)]
        nm = name if len(vpns) == 1 else (f"{name}-{k + 1}" if name else None)
        blocks.append(render_vpn(v, local_address=local_address, advertise=o.advertise, name=nm,
                                 static_routes=o.static_routes, ike_version=ike_version))
    if merge_text is None:
        out = HEADER + "\n" + "\n".join(blocks)
        try:
            cfgmod.parse_config(out, source="<import>")
        except cfgmod.ConfigError as e:
            raise AwsImportError("the imported configuration does not validate: " + "; ".join(x.message if not x.table else f"{x.table}: {x.key}: {x.message}" for x in e.errors)) from None
    else:
        out = merge_config(merge_text, merge_source, "\n".join(blocks))
    summary = []
    for v in vpns:
        versions = sorted({_plan(t, ike_version)[0].ike_version for t in v.tunnels})
        starts = [t.index for t in v.tunnels if _plan(t, ike_version)[0].startup_action == "start"]
        if v.static:
            routing = "static routing to " + ", ".join(opts[id(v)].static_routes or v.routes)
        else:
            routing = f"BGP AS{v.tunnels[0].local_asn} <-> AS{v.tunnels[0].remote_asn}"
        summary.append(
            f"{v.vpn_id or 'VPN connection'}: {len(v.tunnels)} tunnel(s) to "
            + ", ".join(t.aws_outside or "?" for t in v.tunnels)
            + f", {'/'.join(f'IKEv{x}' for x in versions)}, {routing}"
            + (f"; AWS initiates tunnel {', '.join(map(str, starts))}" if starts else "")
        )
    return ImportResult(fmt, out, vpns, summary, notes_for(vpns, ike_version))
