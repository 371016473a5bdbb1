"""Write a lab VPN connection the way the AWS console and CLI hand it out, in every format
`cgwctl import aws` reads: the XML (see awsxml), `aws ec2 describe-vpn-connections` JSON, and
the console's "Download configuration" text for Generic, Yamaha RTX and Cisco IOS.

The vendor texts follow AWS's templates line for line, comments included, with the lab's
addresses, keys and ASNs substituted:

* Yamaha RTX (Rev.10): the download quoted in full in ``/work/shared/seeds/000_*``
  (tech.guitarrapc.com, RTX810), indentation and comment blocks as AWS writes them.
* Cisco IOS 12.4+ ("CSRv AMI"): AWS's keyring / isakmp-profile / VTI template; the lines
  seed 003 (NEC IX behind NAT) reads its essentials from appear verbatim:
  ``crypto keyring keyring-vpn-...-0 local-address ... pre-shared-key address ... key ...``,
  ``interface Tunnel1 ip address ... 255.255.255.252 ip virtual-reassembly`` and
  ``router bgp ... neighbor ... remote-as ... activate ... timers 10 30 30``.
* Generic: AWS's vendor-neutral text (the layout of tests/unit/data/aws_generic.txt).

Only algorithms the vendor syntax can express are accepted (ValueError otherwise).
"""

from __future__ import annotations

import ipaddress
import json
import os

from . import awsxml
from .awsxml import XmlTunnel, split_proposal

FORMATS = ("xml", "json", "generic", "yamaha", "cisco-ios")
FILE_NAMES = {"xml": "aws-vpn.xml", "json": "describe-vpn-connections.json", "generic": "aws-generic.txt",
              "yamaha": "aws-yamaha-rtx.txt", "cisco-ios": "aws-cisco-ios.txt"}

CGW_ID = "cgw-0123456789abcdef0"
VGW_ID = "vgw-0123456789abcdef0"


def _inside(t: XmlTunnel) -> tuple[ipaddress.IPv4Network, str, str]:
    net = ipaddress.IPv4Network(t.inside_cidr)
    return net, str(net[2]), str(net[1])  # (net, customer side .2, AWS side .1)


def _need(table: dict, key, what: str, fmt: str):
    if key not in table:
        raise ValueError(f"the {fmt} download cannot express {what} {key!r}")
    return table[key]


# ------------------------------------------------------------------------------ Yamaha

_Y_ENC = {"aes128": "aes-cbc", "aes256": "aes256-cbc"}
_Y_HASH = {"sha1": "sha", "sha256": "sha256"}
_Y_ESP_AUTH = {"sha1": "sha-hmac", "sha256": "sha256-hmac"}
_Y_GROUP = {"modp1024": "modp1024", "modp2048": "modp2048"}

_YAMAHA_HEAD = """\
# Amazon Web Services
# Virtual Private Cloud

# AWS utilizes unique identifiers to manage the configuration of
# a VPN Connection. Each VPN Connection is assigned an identifier and is
# associated with two other identifiers, namely the
# Customer Gateway Identifier and Virtual Private Gateway Identifier.
#
# Your VPN Connection ID            : {vpn_id}
# Your Virtual Private Gateway ID           : {vgw_id}
# Your Customer Gateway ID          : {cgw_id}
#
#
# This configuration consists of two tunnels. Both tunnels must be
# configured on your Customer Gateway.
#
"""

_YAMAHA_TUNNEL = """\
# --------------------------------------------------------------------------------
# IPSec Tunnel #{n}
# --------------------------------------------------------------------------------


# #1: Internet Key Exchange (IKE) Configuration
#
# A policy is established for the supported ISAKMP encryption,
# authentication, Diffie-Hellman, lifetime, and key parameters.
#
      tunnel select {n}
    ipsec ike encryption {n} {ike_enc}
    ipsec ike group {n} {ike_group}
    ipsec ike hash {n} {ike_hash}

# This line stores the Pre Shared Key used to authenticate the
# tunnel endpoints.
#
       ipsec ike pre-shared-key {n} text {psk}

# #2: IPSec Configuration

# The IPSec policy defines the encryption, authentication, and IPSec
# mode parameters.

# Note that there are a global list of IPSec policies, each identified by
# sequence number. This policy is defined as #{policy}, which may conflict with
# an existing policy using the same number. If so, we recommend changing
# the sequence number to avoid conflicts.
#

        ipsec tunnel {policy}
        ipsec sa policy {policy} {n} esp {esp_enc}  {esp_auth}

# The IPSec profile references the IPSec policy and further defines
# the Diffie-Hellman group and security association lifetime.

     ipsec ike duration ipsec-sa {n} {esp_lifetime}
        ipsec ike pfs {n} {pfs}

# Additional parameters of the IPSec configuration are set here. Note that
# these parameters are global and therefore impact other IPSec
# associations.
# This option instructs the router to clear the "Don't Fragment"
# bit from packets that carry this bit and yet must be fragmented, enabling
# them to be fragmented.
#
    ipsec tunnel outer df-bit clear

# This option enables IPSec Dead Peer Detection, which causes periodic
# messages to be sent to ensure a Security Association remains operational.

        ipsec ike keepalive use {n} on dpd {dpd_delay} {dpd_retry}

# --------------------------------------------------------------------------------
# #3: Tunnel Interface Configuration
#
# A tunnel interface is configured to be the logical interface associated
# with the tunnel. All traffic routed to the tunnel interface will be
# encrypted and transmitted to the VPC. Similarly, traffic from the VPC
# will be logically received on this interface.
#
# The address of the interface is configured with the setup for your
# Customer Gateway.  If the address changes, the Customer Gateway and VPN
# Connection must be recreated with Amazon VPC.
#
    ipsec ike local address {n} {cgw_outside}
    ipsec ike remote address {n} {vgw_outside}
    ip tunnel address {cgw_inside}/{prefixlen}
    ip tunnel remote address {vgw_inside}

   # This option causes the router to reduce the Maximum Segment Size of
    # TCP packets to prevent packet fragmentation

   ip tunnel tcp mss limit {mss}
    tunnel enable {n}
    tunnel select none
        ipsec auto refresh on

# --------------------------------------------------------------------------------


# --------------------------------------------------------------------------------
# #4: Border Gateway Protocol (BGP) Configuration
#
# BGP is used within the tunnel to exchange prefixes between the
# Virtual Private Gateway and your Customer Gateway. The Virtual Private Gateway
# will announce the prefix corresponding to your VPC.
#
# Your Customer Gateway may announce a default route (0.0.0.0/0),
# which can be done with the 'network' and 'default-originate' statements.
#
# The BGP timers are adjusted to provide more rapid detection of outages.
#
# The local BGP Autonomous System Number (ASN) ({cgw_asn}) is configured
# as part of your Customer Gateway. If the ASN must be changed, the
# Customer Gateway and VPN Connection will need to be recreated with AWS.
#
    bgp use on
    bgp autonomous-system {cgw_asn}
    bgp neighbor {n} {vgw_asn} {vgw_inside} hold-time={hold_time} local-address={cgw_inside}

# To advertise additional prefixes to Amazon VPC, copy the 'network' statement and
# identify the prefix you wish to advertise. Make sure the
# prefix is present in the routing table of the device with a valid next-hop.
# For example, the following two lines will advertise 192.168.0.0/16 and 10.0.0.0/16 to Amazon VPC
#
# bgp import filter 1 equal 10.0.0.0/16
# bgp import filter 1 equal 192.168.0.0/16
#

    bgp import filter 1 equal 0.0.0.0/0
    bgp import {vgw_asn} static filter 1
"""

_YAMAHA_TAIL = """
    bgp configure refresh


# Additional Notes and Questions
#  - Amazon Virtual Private Cloud Getting Started Guide:
#       http://docs.amazonwebservices.com/AmazonVPC/latest/GettingStartedGuide
#  - Amazon Virtual Private Cloud Network Administrator Guide:
#       http://docs.amazonwebservices.com/AmazonVPC/latest/NetworkAdminGuide
#  - Yamaha router's manual:
#    http://www.rtpro.yamaha.co.jp/RT/docs/amazon-vpc/index.html
#  - XSL Version: 2009-07-15-1119716
"""


def render_yamaha(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel]) -> str:
    out = [_YAMAHA_HEAD.format(vpn_id=vpn_id, cgw_id=cgw_id, vgw_id=vgw_id)]
    for n, t in enumerate(tunnels, 1):
        net, cgw_in, vgw_in = _inside(t)
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        if esp_dh not in (None, ike_dh):
            raise ValueError("the yamaha download sets PFS with the IKE group only ('ipsec ike pfs N on')")
        out.append(_YAMAHA_TUNNEL.format(
            n=n, policy=200 + n, psk=t.psk, cgw_outside=t.cgw_outside, vgw_outside=t.vgw_outside,
            cgw_inside=cgw_in, vgw_inside=vgw_in, prefixlen=net.prefixlen,
            ike_enc=_need(_Y_ENC, ike_enc, "IKE encryption", "yamaha"),
            ike_hash=_need(_Y_HASH, ike_auth, "IKE hash", "yamaha"),
            ike_group=_need(_Y_GROUP, ike_dh, "DH group", "yamaha"),
            esp_enc=_need(_Y_ENC, esp_enc, "ESP encryption", "yamaha"),
            esp_auth=_need(_Y_ESP_AUTH, esp_auth, "ESP integrity", "yamaha"),
            esp_lifetime=t.esp_lifetime, pfs="on" if esp_dh else "off",
            dpd_delay=t.dpd_delay, dpd_retry=t.dpd_retry,
            mss=t.mss + 8,  # AWS's Yamaha template says 1387 where the XML says 1379
            cgw_asn=t.cgw_asn, vgw_asn=t.vgw_asn, hold_time=t.hold_time))
    out.append(_YAMAHA_TAIL)
    return "".join(out)


# ---------------------------------------------------------------------------- Cisco IOS

_C_ENC = {"aes128": "aes 128", "aes256": "aes 256"}
_C_HASH = {"sha1": "sha", "sha256": "sha256"}
_C_ESP_AUTH = {"sha1": "esp-sha-hmac", "sha256": "esp-sha256-hmac"}

_CISCO_HEAD = """\
! Amazon Web Services
! Virtual Private Cloud

! AWS utilizes unique identifiers to manage the configuration of
! a VPN Connection. Each VPN Connection is assigned an identifier and is
! associated with two other identifiers, namely the
! Customer Gateway Identifier and Virtual Private Gateway Identifier.
!
! Your VPN Connection ID                  : {vpn_id}
! Your Virtual Private Gateway ID         : {vgw_id}
! Your Customer Gateway ID                : {cgw_id}
!
!
! This configuration consists of two tunnels. Both tunnels must be
! configured on your Customer Gateway.
!
"""

_CISCO_TUNNEL = """\
! --------------------------------------------------------------------------------
! IPSec Tunnel #{n}
! --------------------------------------------------------------------------------
! #1: Internet Key Exchange (IKE) Configuration
!
! A policy is established for the supported ISAKMP encryption,
! authentication, Diffie-Hellman, lifetime, and key parameters.
! Please note, these sample configurations are for the minimum requirement of AES128, SHA1, and DH Group 2.
! Category "VPN" connections in the GovCloud region have a minimum requirement of AES128, SHA2, and DH Group 14.
! You will need to modify these sample configuration files to take advantage of AES256, SHA256, or other DH groups like 2, 14-18, 22, 23, and 24.
! NOTE: If you customized tunnel options when creating or modifying your VPN connection, you may need to modify these sample configurations to match the custom settings for your tunnels.
!
! Higher parameters are only available for VPNs of category "VPN," and not for "VPN-Classic".
! The address of the external interface for your customer gateway must be a static address.
! Your customer gateway may reside behind a device performing network address translation (NAT).
! To ensure that NAT traversal (NAT-T) can function, you must adjust your firewall !rules to unblock UDP port 4500.
! If not behind NAT, and you are not using an Accelerated VPN, we recommend disabling NAT-T. If you are using an Accelerated VPN, make sure that NAT-T is enabled.
!
! Note that there are a global list of ISAKMP policies, each identified by
! sequence number. This policy is defined as #{policy}, which may conflict with
! an existing policy using the same number. If so, we recommend changing
! the sequence number to avoid conflicts.
!
crypto isakmp policy {policy}
  encryption {ike_enc}
  authentication pre-share
  group {ike_group}
  lifetime {ike_lifetime}
  hash {ike_hash}
exit

! The ISAKMP keyring stores the Pre Shared Key used to authenticate the
! tunnel endpoints.
!
crypto keyring keyring-{vpn_id}-{k}
  local-address {cgw_outside}
  pre-shared-key address {vgw_outside} key {psk}
exit

! An ISAKMP profile is used to associate the keyring with the particular
! endpoint.
!
crypto isakmp profile isakmp-{vpn_id}-{k}
  local-address {cgw_outside}
  match identity address {vgw_outside}
  keyring keyring-{vpn_id}-{k}
exit

! #2: IPSec Configuration
!
! The IPSec transform set defines the encryption, authentication, and IPSec
! mode parameters.
! Please note, you may use these additionally supported IPSec parameters for encryption like AES256 and other DH groups like 2, 5, 14-18, 22, 23, and 24.
! Higher parameters are only available for VPNs of category "VPN," and not for "VPN-Classic".
!
crypto ipsec transform-set ipsec-prop-{vpn_id}-{k} esp-{esp_enc} {esp_auth}
  mode tunnel
exit

! The IPSec profile references the IPSec transform set and further defines
! the Diffie-Hellman group and security association lifetime.
!
crypto ipsec profile ipsec-{vpn_id}-{k}
{pfs}  set security-association lifetime seconds {esp_lifetime}
  set transform-set ipsec-prop-{vpn_id}-{k}
exit

! Additional parameters of the IPSec configuration are set here. Note that
! these parameters are global and therefore impact other IPSec
! associations.
! This option instructs the router to clear the "Don't Fragment"
! bit from packets that carry this bit and yet must be fragmented, enabling
! them to be fragmented.
!
crypto ipsec df-bit clear

! This option enables IPSec Dead Peer Detection, which causes periodic
! messages to be sent to ensure a Security Association remains operational.
!
crypto isakmp keepalive {dpd_delay} 10

! This configures the gateway's window for accepting out of order
! IPSec packets. A larger window can be helpful if too many packets
! are dropped due to reordering while in transit between gateways.
!
crypto ipsec security-association replay window-size 128

! This option instructs the router to fragment the unencrypted packets
! (prior to encryption).
!
crypto ipsec fragmentation before-encryption

! --------------------------------------------------------------------------------
! #3: Tunnel Interface Configuration
!
! A tunnel interface is configured to be the logical interface associated
! with the tunnel. All traffic routed to the tunnel interface will be
! encrypted and transmitted to the VPC. Similarly, traffic from the VPC
! will be logically received on this interface.
!
! Association with the IPSec security association is done through the
! "tunnel protection" command.
!
! The address of the interface is configured with the setup for your
! Customer Gateway.  If the address changes, the Customer Gateway and VPN
! Connection must be recreated with Amazon VPC.
!
interface Tunnel{n}
  ip address {cgw_inside} {netmask}
  ip virtual-reassembly
  tunnel source {cgw_outside}
  tunnel destination {vgw_outside}
  tunnel mode ipsec ipv4
  tunnel protection ipsec profile ipsec-{vpn_id}-{k}
  ! This option causes the router to reduce the Maximum Segment Size of
  ! TCP packets to prevent packet fragmentation.
  ip tcp adjust-mss {mss}
  no shutdown
exit

! ----------------------------------------------------------------------------
! #4: Border Gateway Protocol (BGP) Configuration
!
! BGP is used within the tunnel to exchange prefixes between the
! Virtual Private Gateway and your Customer Gateway. The Virtual Private Gateway
! will announce the prefix corresponding to your VPC.
!
! Your Customer Gateway may announce a default route (0.0.0.0/0),
! which can be done with the 'network' and 'default-originate' statements.
!
! The BGP timers are adjusted to provide more rapid detection of outages.
!
! The local BGP Autonomous System Number (ASN) ({cgw_asn}) is configured
! as part of your Customer Gateway. If the ASN must be changed, the
! Customer Gateway and VPN Connection will need to be recreated with AWS.
!
router bgp {cgw_asn}
  neighbor {vgw_inside} remote-as {vgw_asn}
  neighbor {vgw_inside} activate
  neighbor {vgw_inside} timers 10 {hold_time} {hold_time}
  address-family ipv4 unicast
    neighbor {vgw_inside} remote-as {vgw_asn}
    neighbor {vgw_inside} timers 10 {hold_time} {hold_time}
    neighbor {vgw_inside} default-originate
    neighbor {vgw_inside} activate
    neighbor {vgw_inside} soft-reconfiguration inbound
! To advertise additional prefixes to Amazon VPC, copy the 'network' statement
! and identify the prefix you wish to advertise. Make sure the prefix is present
! in the routing table of the device with a valid next-hop.
    network 0.0.0.0
  exit
exit
!

"""

_CISCO_TAIL = """\
! Additional Notes and Questions
!  - Amazon Virtual Private Cloud Getting Started Guide:
!       http://docs.amazonwebservices.com/AmazonVPC/latest/GettingStartedGuide
!  - Amazon Virtual Private Cloud Network Administrator Guide:
!       http://docs.amazonwebservices.com/AmazonVPC/latest/NetworkAdminGuide
!  - XSL Version: 2009-07-15-1119716
"""


def render_cisco_ios(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel]) -> str:
    out = [_CISCO_HEAD.format(vpn_id=vpn_id, cgw_id=cgw_id, vgw_id=vgw_id)]
    for n, t in enumerate(tunnels, 1):
        net, cgw_in, vgw_in = _inside(t)
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        out.append(_CISCO_TUNNEL.format(
            n=n, k=n - 1, policy=199 + n, vpn_id=vpn_id, psk=t.psk, cgw_outside=t.cgw_outside,
            vgw_outside=t.vgw_outside, cgw_inside=cgw_in, vgw_inside=vgw_in, netmask=net.netmask,
            ike_enc=_need(_C_ENC, ike_enc, "IKE encryption", "cisco-ios"),
            ike_hash=_need(_C_HASH, ike_auth, "IKE hash", "cisco-ios"),
            ike_group=_need(awsxml.DH_GROUP, ike_dh, "DH group", "cisco-ios"),
            ike_lifetime=t.ike_lifetime,
            esp_enc=_need(_C_ENC, esp_enc, "ESP encryption", "cisco-ios"),
            esp_auth=_need(_C_ESP_AUTH, esp_auth, "ESP integrity", "cisco-ios"),
            pfs=f"  set pfs group{awsxml.DH_GROUP[esp_dh]}\n" if esp_dh else "",
            esp_lifetime=t.esp_lifetime, dpd_delay=t.dpd_delay, mss=t.mss,
            cgw_asn=t.cgw_asn, vgw_asn=t.vgw_asn, hold_time=t.hold_time))
    out.append(_CISCO_TAIL)
    return "".join(out)


# ------------------------------------------------------------------------------ Generic

_G_ENC = {"aes128": "aes-128-cbc", "aes256": "aes-256-cbc"}

_GENERIC_HEAD = """\
Amazon Web Services
Virtual Private Cloud

AWS utilizes unique identifiers to manage the configuration of
a VPN Connection. Each VPN Connection is assigned an identifier and is
associated with two other identifiers, namely the
Customer Gateway Identifier and Virtual Private Gateway Identifier.

Your VPN Connection ID                   : {vpn_id}
Your Virtual Private Gateway ID          : {vgw_id}
Your Customer Gateway ID                 : {cgw_id}

This configuration consists of two tunnels. Both tunnels must be
configured on your Customer Gateway.

"""

_GENERIC_TUNNEL = """\
--------------------------------------------------------------------------------
IPSec Tunnel #{n}
--------------------------------------------------------------------------------
#1: Internet Key Exchange Configuration

Configure the IKE SA as follows:
Please note, these sample configurations are for the minimum requirement of AES128, SHA1, and DH Group 2.
Category "VPN" connections in the GovCloud region have a minimum requirement of AES128, SHA2, and DH Group 14.
You will need to modify these sample configuration files to take advantage of AES256, SHA256, or other DH groups like 2, 14-18, 22, 23, and 24.
NOTE: If you customized tunnel options when creating or modifying your VPN connection, you may need to modify these sample configurations to match the custom settings for your tunnels.

Higher parameters are only available for VPNs of category "VPN," and not for "VPN-Classic".
The address of the external interface for your customer gateway must be a static address.
Your customer gateway may reside behind a device performing network address translation (NAT).
To ensure that NAT traversal (NAT-T) can function, you must adjust your firewall rules to unblock UDP port 4500.
If not behind NAT, and you are not using an Accelerated VPN, we recommend disabling NAT-T. If you are using an Accelerated VPN, make sure that NAT-T is enabled.

  - IKE version              : IKEv1
  - Authentication Method    : Pre-Shared Key
  - Pre-Shared Key           : {psk}
  - Authentication Algorithm : {ike_auth}
  - Encryption Algorithm     : {ike_enc}
  - Lifetime                 : {ike_lifetime} seconds
  - Phase 1 Negotiation Mode : main
  - Diffie-Hellman           : Group {ike_group}

#2: IPSec Configuration

Configure the IPSec SA as follows:
Category "VPN" connections in the GovCloud region have a minimum requirement of AES128, SHA2, and DH Group 14.
Please note, you may use these additionally supported IPSec parameters for encryption like AES256 and other DH groups like 2, 5, 14-18, 22, 23, and 24.
Higher parameters are only available for VPNs of category "VPN," and not for "VPN-Classic".

  - Protocol                 : esp
  - Authentication Algorithm : {esp_auth}
  - Encryption Algorithm     : {esp_enc}
  - Lifetime                 : {esp_lifetime} seconds
  - Mode                     : tunnel
  - Perfect Forward Secrecy  : {pfs}

IPSec Dead Peer Detection (DPD) will be enabled on the AWS Endpoint. We
recommend configuring DPD on your endpoint as follows:
  - DPD Interval             : {dpd_delay}
  - DPD Retries              : {dpd_retry}

IPSec ESP (Encapsulating Security Payload) inserts additional
headers to transmit packets. These headers require additional space,
which reduces the amount of space available to transmit application data.
To limit the impact of this behavior, we recommend the following
configuration on your Customer Gateway:
  - TCP MSS Adjustment       : {mss} bytes
  - Clear Don't Fragment Bit : enabled
  - Fragmentation            : Before encryption

#3: Tunnel Interface Configuration

Your Customer Gateway must be configured with a tunnel interface that is
associated with the IPSec tunnel. All traffic transmitted to the tunnel
interface is encrypted and transmitted to the Virtual Private Gateway.

The Customer Gateway and Virtual Private Gateway each have two addresses that relate
to this IPSec tunnel. Each contains an outside address, upon which encrypted
traffic is exchanged. Each also contain an inside address associated with
the tunnel interface.

The Customer Gateway outside IP address was provided when the Customer Gateway
was created. Changing the IP address requires the creation of a new
Customer Gateway.

The Customer Gateway inside IP address should be configured on your tunnel
interface.

Outside IP Addresses:
  - Customer Gateway                 : {cgw_outside}
  - Virtual Private Gateway          : {vgw_outside}

Inside IP Addresses
  - Customer Gateway                 : {cgw_inside}/{prefixlen}
  - Virtual Private Gateway          : {vgw_inside}/{prefixlen}

Configure your tunnel to fragment at the optimal size:
  - Tunnel interface MTU     : 1436 bytes

#4: Border Gateway Protocol (BGP) Configuration:

The Border Gateway Protocol (BGPv4) is used within the tunnel, between the inside
IP addresses, to exchange routes from the VPC to your home network. Each
BGP router has an Autonomous System Number (ASN). Your ASN was provided
to AWS when the Customer Gateway was created.

BGP Configuration Options:
  - Customer Gateway ASN          : {cgw_asn}
  - Virtual Private  Gateway ASN  : {vgw_asn}
  - Neighbor IP Address           : {vgw_inside}
  - Neighbor Hold Time            : {hold_time}

Configure BGP to announce routes to the Virtual Private Gateway. The gateway
will announce prefixes to your customer gateway based upon the prefix you
assigned to the VPC at creation time.

"""

_GENERIC_TAIL = """\
Additional Notes and Questions
  - Amazon Virtual Private Cloud Getting Started Guide:
        http://docs.amazonwebservices.com/AmazonVPC/latest/GettingStartedGuide
  - Amazon Virtual Private Cloud Network Administrator Guide:
        http://docs.amazonwebservices.com/AmazonVPC/latest/NetworkAdminGuide
"""


def render_generic(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel]) -> str:
    out = [_GENERIC_HEAD.format(vpn_id=vpn_id, cgw_id=cgw_id, vgw_id=vgw_id)]
    for n, t in enumerate(tunnels, 1):
        net, cgw_in, vgw_in = _inside(t)
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        out.append(_GENERIC_TUNNEL.format(
            n=n, psk=t.psk, cgw_outside=t.cgw_outside, vgw_outside=t.vgw_outside, cgw_inside=cgw_in,
            vgw_inside=vgw_in, prefixlen=net.prefixlen,
            ike_auth=_need(awsxml.IKE_AUTH, ike_auth, "IKE integrity", "generic"),
            ike_enc=_need(_G_ENC, ike_enc, "IKE encryption", "generic"),
            ike_lifetime=t.ike_lifetime, ike_group=_need(awsxml.DH_GROUP, ike_dh, "DH group", "generic"),
            esp_auth=_need(awsxml.ESP_AUTH, esp_auth, "ESP integrity", "generic"),
            esp_enc=_need(awsxml.ESP_ENC, esp_enc, "ESP encryption", "generic"),
            esp_lifetime=t.esp_lifetime,
            pfs=f"Diffie-Hellman Group {awsxml.DH_GROUP[esp_dh]}" if esp_dh else "none",
            dpd_delay=t.dpd_delay, dpd_retry=t.dpd_retry, mss=t.mss,
            cgw_asn=t.cgw_asn, vgw_asn=t.vgw_asn, hold_time=t.hold_time))
    out.append(_GENERIC_TAIL)
    return "".join(out)


# --------------------------------------------------------------------------------- JSON


def render_json(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel]) -> str:
    """`aws ec2 describe-vpn-connections --vpn-connection-ids ...` as the CLI prints it."""
    options = []
    telemetry = []
    for t in tunnels:
        options.append({"OutsideIpAddress": t.vgw_outside, "TunnelInsideCidr": str(_inside(t)[0]),
                        "PreSharedKey": t.psk})
        telemetry.append({"AcceptedRouteCount": 0, "LastStatusChange": "2026-11-22T00:00:00+00:00",
                          "OutsideIpAddress": t.vgw_outside, "Status": "DOWN", "StatusMessage": ""})
    doc = {"VpnConnections": [{
        "CustomerGatewayConfiguration": awsxml.render(vpn_id, cgw_id, vgw_id, tunnels),
        "CustomerGatewayId": cgw_id,
        "Category": "VPN",
        "State": "available",
        "Type": "ipsec.1",
        "VpnConnectionId": vpn_id,
        "VpnGatewayId": vgw_id,
        "Options": {
            "EnableAcceleration": False,
            "StaticRoutesOnly": False,
            "LocalIpv4NetworkCidr": "0.0.0.0/0",
            "RemoteIpv4NetworkCidr": "0.0.0.0/0",
            "TunnelInsideIpVersion": "ipv4",
            "TunnelOptions": options,
        },
        "Routes": [],
        "Tags": [{"Key": "Name", "Value": "cgwd-lab"}],
        "VgwTelemetry": telemetry,
    }]}
    return json.dumps(doc, indent=4) + "\n"


# ---------------------------------------------------------------------------------- lab

_RENDER = {"xml": awsxml.render, "json": render_json, "generic": render_generic,
           "yamaha": render_yamaha, "cisco-ios": render_cisco_ios}


def render(fmt: str, vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel]) -> str:
    try:
        fn = _RENDER[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})") from None
    return fn(vpn_id, cgw_id, vgw_id, tunnels)


def lab_tunnels(lab) -> list[XmlTunnel]:
    """The lab's VPN connection as AWS describes it (what ``Lab.aws_xml`` renders)."""
    s = lab.spec
    out = []
    for t in lab.tunnels:
        a = t.spec
        out.append(XmlTunnel(
            cgw_outside=s.cgw_public, vgw_outside=t.aws_outside, inside_cidr=str(t.inside),
            cgw_asn=s.cgw_asn, vgw_asn=s.aws_asn, psk=t.psk,
            ike_proposal=a.ike_proposals.split(",")[0], esp_proposal=a.esp_proposals.split(",")[0],
            ike_lifetime=a.ike_lifetime, hold_time=a.hold_time, dpd_delay=int(a.dpd_delay.rstrip("s"))))
    return out


def render_lab(lab, fmt: str) -> str:
    return render(fmt, lab.spec.vpn_id, CGW_ID, VGW_ID, lab_tunnels(lab))


def write_lab(lab, fmt: str, path: str | None = None) -> str:
    """Write the lab's VPN connection in ``fmt`` (mode 0600: it holds the PSKs); returns the path."""
    path = path or os.path.join(lab.workdir, FILE_NAMES[fmt])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render_lab(lab, fmt))
    return path
