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
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

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


@dataclass
class ImportedVpn:
    fmt: str
    vpn_id: str | None = None
    cgw_id: str | None = None
    vgw_id: str | None = None
    tgw_id: str | None = None
    tunnels: list[ImportedTunnel] = field(default_factory=list)

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
    for i, el in enumerate(tunnels, 1):
        t = ImportedTunnel(i)
        cg, vg = el.find("customer_gateway"), el.find("vpn_gateway")
        t.cgw_outside = tx(cg, "tunnel_outside_address/ip_address") or tx(cg, "tunnel_outside_address")
        t.aws_outside = tx(vg, "tunnel_outside_address/ip_address") or tx(vg, "tunnel_outside_address")
        t.cgw_inside = tx(cg, "tunnel_inside_address/ip_address")
        t.aws_inside = tx(vg, "tunnel_inside_address/ip_address")
        t.prefixlen = _intval(tx(cg, "tunnel_inside_address/network_cidr")) or 30
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
        out.append(v)
    return out


# -------------------------------------------------------------------------- Generic

_IP = r"(\d{1,3}(?:\.\d{1,3}){3})"


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
        m = re.search(r"Outside IP Addresses:?\s*-\s*Customer Gateway\s*:\s*" + _IP + r"\s*-\s*(?:Virtual Private|Transit) Gateway\s*:\s*" + _IP, sec, re.I)
        if m:
            t.cgw_outside, t.aws_outside = m.group(1), m.group(2)
        m = re.search(r"Inside IP Addresses:?\s*-\s*Customer Gateway\s*:\s*" + _IP + r"/(\d+)\s*-\s*(?:Virtual Private|Transit) Gateway\s*:\s*" + _IP, sec, re.I)
        if m:
            t.cgw_inside, t.prefixlen, t.aws_inside = m.group(1), int(m.group(2)), m.group(3)
        t.local_asn = _intval(f(r"Customer Gateway ASN"))
        t.remote_asn = _intval(f(r"(?:Virtual Private|Transit)\s+Gateway\s+ASN"))
        t.hold_time = _intval(f(r"Neighbor Hold Time"))
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
        m = re.search(r"ipsec ike keepalive use\s+\d+\s+on\s+dpd\s+(\d+)\s+(\d+)", sec)
        if m:
            t.dpd_interval, t.dpd_retries = int(m.group(1)), int(m.group(2))
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
    return vpn


# ------------------------------------------------------------------------- checking


def _check(vpn: ImportedVpn, local_address: str | None) -> list[str]:
    problems = []
    if not vpn.tunnels:
        problems.append("no tunnel found")
    for t in vpn.tunnels:
        p = f"tunnel {t.index}"
        if not t.psk:
            problems.append(f"{p}: no pre-shared key found")
        elif cfgmod.check_psk(t.psk):
            problems.append(f"{p}: the pre-shared key is not an AWS key (it {cfgmod.PSK_RULE}): is the file a template with placeholders?")
        for attr, what in (
            ("aws_outside", "AWS outside (tunnel endpoint) address"),
            ("cgw_inside", "customer gateway inside address"),
            ("remote_asn", "AWS-side BGP ASN"),
        ):
            if getattr(t, attr) in (None, ""):
                problems.append(f"{p}: no {what} found")
        if not t.cgw_outside and not local_address:
            problems.append(f"{p}: no customer gateway outside address found (give --local-address)")
        if not t.local_asn:
            problems.append(f"{p}: no customer gateway BGP ASN found")
        for attr in ("cgw_outside", "aws_outside", "cgw_inside", "aws_inside"):
            v = getattr(t, attr)
            if v:
                try:
                    IPv4Address(v)
                except ValueError:
                    problems.append(f"{p}: {attr.replace('_', ' ')} {v!r} is not an IPv4 address")
    return problems


def _proposal(enc: str | None, integ: str | None, dh: int | None, ike: bool) -> str:
    enc = enc or "aes128"
    parts = [enc]
    if not enc.endswith("gcm16"):
        parts.append(integ or "sha1")
    # a download that does not state the group gets AWS's default (group 2, PFS on)
    parts.append(cfgmod.DH_NAMES.get(dh if dh is not None else 2, "modp1024"))
    return "-".join(parts)


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


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
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
) -> str:
    """The ``[[vpn]]`` block (with its tunnels) for one imported connection."""
    problems = _check(vpn, local_address)
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
    lines.append(f"local_asn = {t0.local_asn}")
    lines.append(f"remote_asn = {t0.remote_asn}")
    lines.append(f"advertise = {_val(list(advertise or []))}" + ("" if advertise else "   # on-prem prefixes to announce, e.g. [\"10.200.0.0/24\"]"))
    lines.append(f"gateway_type = {_val(vpn.gateway_type)}")
    for t, tname in zip(vpn.tunnels, tunnel_names):
        inside = IPv4Interface(f"{t.cgw_inside}/{t.prefixlen}").network
        lines.append("")
        lines.append("  [[vpn.tunnel]]")
        lines.append(f"  name = {_val(tname)}")
        lines.append(f"  remote_address = {_val(t.aws_outside)}")
        lines.append(f"  psk = {_val(t.psk)}")
        lines.append(f"  inside_cidr = {_val(str(inside))}" + (f"   # AWS {t.aws_inside}, us {t.cgw_inside}" if t.aws_inside else ""))
        if t.cgw_outside and local_address and t.cgw_outside != public:
            lines.append(f"  public_address = {_val(t.cgw_outside)}")
        lines.append(f"  ike_proposals = {_val([_proposal(t.ike_enc, t.ike_integ, t.ike_dh, True)])}")
        if t.ike_lifetime:
            lines.append(f"  ike_lifetime = {t.ike_lifetime}")
        lines.append(f"  esp_proposals = {_val([_proposal(t.esp_enc, t.esp_integ, t.esp_pfs, False)])}")
        if t.esp_lifetime:
            lines.append(f"  esp_lifetime = {t.esp_lifetime}")
        if t.dpd_interval:
            lines.append(f"  dpd_interval = {t.dpd_interval}")
        if t.dpd_retries:
            lines.append(f"  dpd_retries = {t.dpd_retries}")
        if t.hold_time:
            lines.append(f"  hold_time = {t.hold_time}")
        if t.mtu:
            lines.append(f"  mtu = {t.mtu}")
        if t.mss:
            lines.append(f"  mss = {t.mss}")
    return "\n".join(lines) + "\n"


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
            if t.inside_cidr.overlaps(o.inside_cidr):
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


def import_aws(
    text: str,
    *,
    local_address: str | None = None,
    advertise: list[str] | None = None,
    name: str | None = None,
    merge_text: str | None = None,
    merge_source: str = "<existing>",
) -> ImportResult:
    if not text.strip():
        raise AwsImportError("the input is empty")
    if local_address:
        try:
            IPv4Address(local_address)
        except ValueError:
            raise AwsImportError(f"--local-address {local_address!r} is not an IPv4 address") from None
    for a in advertise or []:
        try:
            IPv4Network(a)
        except ValueError:
            raise AwsImportError(f"--advertise {a!r} is not an IPv4 prefix like 10.200.0.0/24") from None
    fmt = detect_format(text)
    vpns = parse_aws(text, fmt)
    problems = []
    for v in vpns:
        pre = f"{v.vpn_id}: " if len(vpns) > 1 and v.vpn_id else ""
        problems += [pre + p for p in _check(v, local_address)]
    if problems:
        raise AwsImportError("; ".join(problems))
    if merge_text is None:
        out = render_config(vpns, local_address=local_address, advertise=advertise, name=name)
        try:
            cfgmod.parse_config(out, source="<import>")
        except cfgmod.ConfigError as e:
            raise AwsImportError("the imported configuration does not validate: " + "; ".join(x.message if not x.table else f"{x.table}: {x.key}: {x.message}" for x in e.errors)) from None
    else:
        blocks = "\n".join(
            render_vpn(v, local_address=local_address, advertise=advertise,
                       name=(name if len(vpns) == 1 else (f"{name}-{k + 1}" if name else None)))
            for k, v in enumerate(vpns)
        )
        out = merge_config(merge_text, merge_source, blocks)
    summary = []
    for v in vpns:
        summary.append(
            f"{v.vpn_id or 'VPN connection'}: {len(v.tunnels)} tunnel(s) to "
            + ", ".join(t.aws_outside or "?" for t in v.tunnels)
            + f", BGP AS{v.tunnels[0].local_asn} <-> AS{v.tunnels[0].remote_asn}"
        )
    return ImportResult(fmt, out, vpns, summary)
