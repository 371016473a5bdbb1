"""Write the AWS configuration of a lab VPN connection in the form AWS's API returns it.

This is the ``CustomerGatewayConfiguration`` XML of EC2 DescribeVpnConnections, the same
document the console's "Generic" download is rendered from.  A static VPN connection
(``static=True``) says ``NoBGPVPNConnection`` and has no ``<bgp>``; IPv6 inside CIDRs (/126)
and IPv6 outside addresses are written in the same elements (the XML says no IKE version).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from xml.sax.saxutils import escape

# strongSwan proposal keywords -> the names AWS uses in the XML.
IKE_ENC = {"aes128": "aes-128-cbc", "aes256": "aes-256-cbc", "aes128gcm16": "aes-128-gcm-16",
           "aes256gcm16": "aes-256-gcm-16"}
IKE_AUTH = {"sha1": "sha1", "sha256": "sha2-256", "sha384": "sha2-384", "sha512": "sha2-512"}
ESP_ENC = {"aes128": "aes-128-cbc", "aes256": "aes-256-cbc", "aes128gcm16": "aes-128-gcm-16",
           "aes256gcm16": "aes-256-gcm-16"}
ESP_AUTH = {"sha1": "hmac-sha1-96", "sha256": "hmac-sha2-256-128", "sha384": "hmac-sha2-384-192",
            "sha512": "hmac-sha2-512-256"}
DH_GROUP = {"modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15, "modp4096": 16,
            "modp6144": 17, "modp8192": 18, "ecp256": 19, "ecp384": 20, "ecp521": 21,
            "modp1024s160": 22, "modp2048s224": 23, "modp2048s256": 24}


def split_proposal(proposal: str) -> tuple[str, str | None, str | None]:
    """'aes128-sha1-modp1024' -> ('aes128', 'sha1', 'modp1024'); GCM has no integrity."""
    parts = proposal.split("-")
    enc = parts[0]
    integ = next((p for p in parts[1:] if p.startswith("sha")), None)  # GCM: None (a prf part is no integrity)
    dh = next((p for p in parts[1:] if p in DH_GROUP), None)
    return enc, integ, dh


@dataclass
class XmlTunnel:
    cgw_outside: str
    vgw_outside: str
    inside_cidr: str  # the /30
    cgw_asn: int
    vgw_asn: int
    psk: str
    ike_proposal: str = "aes128-sha1-modp1024"
    esp_proposal: str = "aes128-sha1-modp1024"
    ike_lifetime: int = 28800
    esp_lifetime: int = 3600
    hold_time: int = 30
    dpd_delay: int = 10
    dpd_retry: int = 3
    mss: int = 1379
    # what only the JSON and the vendor texts say (the XML has no IKE version)
    ike_versions: tuple[int, ...] = ()  # () = not stated (the downloads' IKEv1 texts)
    startup_action: str | None = None  # "add" | "start" (JSON StartupAction)
    dpd_timeout: int | None = None  # AWS's DpdTimeoutSeconds (None: dpd_delay * dpd_retry)
    dpd_timeout_action: str = "clear"
    rekey_margin: int = 270  # AWS's defaults (RekeyMarginTimeSeconds, RekeyFuzzPercentage, ReplayWindowSize)
    rekey_fuzz: int = 100
    replay_window: int = 1024

    @property
    def inside(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The inside CIDR: an IPv4 /30 or an IPv6 /126; AWS has network + 1, the customer + 2."""
        return ipaddress.ip_network(self.inside_cidr)


def _addr_block(tag: str, address: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    mask = f"        <network_mask>{net.netmask}</network_mask>\n" if net.version == 4 else ""
    return (f"      <{tag}>\n        <ip_address>{address}</ip_address>\n{mask}"
            f"        <network_cidr>{net.prefixlen}</network_cidr>\n      </{tag}>\n")


def render(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], *, static: bool = False) -> str:
    gw = (f"  <vpn_gateway_id></vpn_gateway_id>\n  <transit_gateway_id>{escape(vgw_id)}</transit_gateway_id>\n"
          if vgw_id.startswith("tgw-") else f"  <vpn_gateway_id>{escape(vgw_id)}</vpn_gateway_id>\n")
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           f'<vpn_connection id="{escape(vpn_id)}">\n',
           f"  <customer_gateway_id>{escape(cgw_id)}</customer_gateway_id>\n",
           gw,
           "  <vpn_connection_type>ipsec.1</vpn_connection_type>\n"]
    if static:
        out.append("  <vpn_connection_attributes>NoBGPVPNConnection</vpn_connection_attributes>\n")
    for t in tunnels:
        net = t.inside
        vgw_in, cgw_in = str(net[1]), str(net[2])
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        # an IKEv2 GCM IKE SA: the XML names its PRF where the integrity algorithm would be
        ike_auth = ike_auth or next((p[3:] for p in t.ike_proposal.split("-") if p.startswith("prf")), None)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        esp_pfs = f"group{DH_GROUP[esp_dh]}" if esp_dh else "none"
        out.append("  <ipsec_tunnel>\n")
        for side, outside, inside, asn in (("customer_gateway", t.cgw_outside, cgw_in, t.cgw_asn),
                                           ("vpn_gateway", t.vgw_outside, vgw_in, t.vgw_asn)):
            out.append(f"    <{side}>\n      <tunnel_outside_address>\n"
                       f"        <ip_address>{outside}</ip_address>\n      </tunnel_outside_address>\n")
            out.append(_addr_block("tunnel_inside_address", inside, net))
            if not static:
                out.append(f"      <bgp>\n        <asn>{asn}</asn>\n        <hold_time>{t.hold_time}</hold_time>\n"
                           "      </bgp>\n")
            out.append(f"    </{side}>\n")
        out.append(f"""    <ike>
      <authentication_protocol>{IKE_AUTH[ike_auth]}</authentication_protocol>
      <encryption_protocol>{IKE_ENC[ike_enc]}</encryption_protocol>
      <lifetime>{t.ike_lifetime}</lifetime>
      <perfect_forward_secrecy>group{DH_GROUP[ike_dh]}</perfect_forward_secrecy>
      <mode>main</mode>
      <pre_shared_key>{escape(t.psk)}</pre_shared_key>
    </ike>
    <ipsec>
      <protocol>esp</protocol>
      <authentication_protocol>{ESP_AUTH.get(esp_auth, "") if esp_auth else ""}</authentication_protocol>
      <encryption_protocol>{ESP_ENC[esp_enc]}</encryption_protocol>
      <lifetime>{t.esp_lifetime}</lifetime>
      <perfect_forward_secrecy>{esp_pfs}</perfect_forward_secrecy>
      <mode>tunnel</mode>
      <clear_df_bit>true</clear_df_bit>
      <fragmentation_before_encryption>true</fragmentation_before_encryption>
      <tcp_mss_adjustment>{t.mss}</tcp_mss_adjustment>
      <dead_peer_detection>
        <delay>{t.dpd_delay}</delay>
        <retry>{t.dpd_retry}</retry>
      </dead_peer_detection>
    </ipsec>
  </ipsec_tunnel>
""")
    out.append("</vpn_connection>\n")
    return "".join(out)
