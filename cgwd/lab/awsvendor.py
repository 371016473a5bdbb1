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

Beyond AWS's IKEv1/BGP downloads: ``static=True`` renders a static VPN connection (the XML's
``NoBGPVPNConnection``, the JSON's ``StaticRoutesOnly`` with AWS's side routes, the Generic
"Static Routing Configuration" section, the vendor texts without BGP plus the route to the
VPC an operator adds); a tunnel's ``ike_versions``/``startup_action`` become the JSON's
``IkeVersions``/``StartupAction``, the Generic "IKE version" line and Yamaha's ``ipsec ike
version N 2``; IPv6 inside CIDRs and outside addresses go into the XML, JSON and Generic
text (Yamaha and Cisco renderings are IPv4 only, as cgwd's readers of them).
"""

from __future__ import annotations

import ipaddress
import json
import os

from dataclasses import dataclass

from . import awsxml
from .awsxml import XmlTunnel, split_proposal

FORMATS = ("xml", "json", "generic", "yamaha", "cisco-ios")
FILE_NAMES = {"xml": "aws-vpn.xml", "json": "describe-vpn-connections.json", "generic": "aws-generic.txt",
              "yamaha": "aws-yamaha-rtx.txt", "cisco-ios": "aws-cisco-ios.txt"}

CGW_ID = "cgw-0123456789abcdef0"
VGW_ID = "vgw-0123456789abcdef0"


@dataclass(frozen=True)
class VpnShape:
    """What a download says about the whole VPN connection besides its tunnels."""

    static: bool = False  # static routing (no BGP)
    vpc_cidr: str | None = None  # the VPC side: the route an operator adds to a vendor text
    onprem_cidr: str | None = None  # the static routes configured on AWS's side (JSON Routes)


def _inside(t: XmlTunnel) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, str]:
    net = t.inside
    return net, str(net[2]), str(net[1])  # (net, customer side .2, AWS side .1)


def _ipv4_only(tunnels: list[XmlTunnel], fmt: str) -> None:
    for t in tunnels:
        if t.inside.version == 6 or ":" in t.cgw_outside or ":" in t.vgw_outside:
            raise ValueError(f"the {fmt} download cannot express IPv6 (cgwd reads IPv6 from the XML, JSON and Generic text)")


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
{version_line}    ipsec ike encryption {n} {ike_enc}
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

        ipsec ike keepalive use {n} on {keepalive} {dpd_delay} {dpd_retry}

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


"""

_YAMAHA_BGP = """\
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


# AWS's Yamaha template says 1387 where the XML says 1379
_YAMAHA_MSS_EXTRA = 8

def render_yamaha(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], shape: VpnShape = VpnShape()) -> str:
    _ipv4_only(tunnels, "yamaha")
    out = [_YAMAHA_HEAD.format(vpn_id=vpn_id, cgw_id=cgw_id, vgw_id=vgw_id)]
    for n, t in enumerate(tunnels, 1):
        net, cgw_in, vgw_in = _inside(t)
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        if esp_dh not in (None, ike_dh):
            raise ValueError("the yamaha download sets PFS with the IKE group only ('ipsec ike pfs N on')")
        v2 = 2 in t.ike_versions
        fields = dict(
            n=n, policy=200 + n, psk=t.psk, cgw_outside=t.cgw_outside, vgw_outside=t.vgw_outside,
            version_line=f"    ipsec ike version {n} 2\n" if v2 else "", keepalive="rfc4306" if v2 else "dpd",
            cgw_inside=cgw_in, vgw_inside=vgw_in, prefixlen=net.prefixlen,
            ike_enc=_need(_Y_ENC, ike_enc, "IKE encryption", "yamaha"),
            ike_hash=_need(_Y_HASH, ike_auth, "IKE hash", "yamaha"),
            ike_group=_need(_Y_GROUP, ike_dh, "DH group", "yamaha"),
            esp_enc=_need(_Y_ENC, esp_enc, "ESP encryption", "yamaha"),
            esp_auth=_need(_Y_ESP_AUTH, esp_auth, "ESP integrity", "yamaha"),
            esp_lifetime=t.esp_lifetime, pfs="on" if esp_dh else "off",
            dpd_delay=t.dpd_delay, dpd_retry=t.dpd_retry,
            mss=t.mss + _YAMAHA_MSS_EXTRA,
            cgw_asn=t.cgw_asn, vgw_asn=t.vgw_asn, hold_time=t.hold_time)
        out.append(_YAMAHA_TUNNEL.format(**fields))
        if not shape.static:
            out.append(_YAMAHA_BGP.format(**fields))
    if shape.static and shape.vpc_cidr:
        gws = " ".join(f"gateway tunnel {n}" + (" hide" if n == 1 else " weight 0") for n in range(1, len(tunnels) + 1))
        out.append(f"\n# the route to the VPC, added by the operator (a static VPN connection has no BGP)\n"
                   f"    ip route {shape.vpc_cidr} {gws}\n")
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

"""

_CISCO_BGP = """\
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


def render_cisco_ios(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], shape: VpnShape = VpnShape()) -> str:
    _ipv4_only(tunnels, "cisco-ios")
    if any(2 in t.ike_versions for t in tunnels):
        raise ValueError("the cisco-ios rendering writes AWS's IKEv1 template only")
    out = [_CISCO_HEAD.format(vpn_id=vpn_id, cgw_id=cgw_id, vgw_id=vgw_id)]
    for n, t in enumerate(tunnels, 1):
        net, cgw_in, vgw_in = _inside(t)
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        fields = dict(
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
            cgw_asn=t.cgw_asn, vgw_asn=t.vgw_asn, hold_time=t.hold_time)
        out.append(_CISCO_TUNNEL.format(**fields))
        if not shape.static:
            out.append(_CISCO_BGP.format(**fields))
        elif shape.vpc_cidr:
            vpc = ipaddress.IPv4Network(shape.vpc_cidr)
            out.append(f"! the route to the VPC, added by the operator (a static VPN connection has no BGP)\n"
                       f"ip route {vpc.network_address} {vpc.netmask} Tunnel{n} {n * 10}\n!\n\n")
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

  - IKE version              : IKEv{ike_version}
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

"""

_GENERIC_BGP = """\
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


_GENERIC_STATIC = """\
#4: Static Routing Configuration:

To route traffic between your internal network and your VPC,
you will need a static route added to your router.

Static Route Configuration Options:

  - Next hop       : {vgw_inside}

You should add static routes towards your internal network on the VGW.
The VGW will then send traffic towards your internal network over
the tunnels.

"""


def render_generic(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], shape: VpnShape = VpnShape()) -> str:
    out = [_GENERIC_HEAD.format(vpn_id=vpn_id, cgw_id=cgw_id, vgw_id=vgw_id)]
    for n, t in enumerate(tunnels, 1):
        net, cgw_in, vgw_in = _inside(t)
        ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
        esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
        fields = dict(
            n=n, psk=t.psk, cgw_outside=t.cgw_outside, ike_version=2 if 2 in t.ike_versions else 1, vgw_outside=t.vgw_outside, cgw_inside=cgw_in,
            vgw_inside=vgw_in, prefixlen=net.prefixlen,
            ike_auth=_need(awsxml.IKE_AUTH, ike_auth, "IKE integrity", "generic"),
            ike_enc=_need(_G_ENC, ike_enc, "IKE encryption", "generic"),
            ike_lifetime=t.ike_lifetime, ike_group=_need(awsxml.DH_GROUP, ike_dh, "DH group", "generic"),
            esp_auth=_need(awsxml.ESP_AUTH, esp_auth, "ESP integrity", "generic"),
            esp_enc=_need(awsxml.ESP_ENC, esp_enc, "ESP encryption", "generic"),
            esp_lifetime=t.esp_lifetime,
            pfs=f"Diffie-Hellman Group {awsxml.DH_GROUP[esp_dh]}" if esp_dh else "none",
            dpd_delay=t.dpd_delay, dpd_retry=t.dpd_retry, mss=t.mss,
            cgw_asn=t.cgw_asn, vgw_asn=t.vgw_asn, hold_time=t.hold_time)
        out.append(_GENERIC_TUNNEL.format(**fields))
        out.append((_GENERIC_STATIC if shape.static else _GENERIC_BGP).format(**fields))
    out.append(_GENERIC_TAIL)
    return "".join(out)


# --------------------------------------------------------------------------------- JSON


_J_ENC = {"aes128": "AES128", "aes256": "AES256", "aes128gcm16": "AES128-GCM-16", "aes256gcm16": "AES256-GCM-16"}
_J_INTEG = {"sha1": "SHA1", "sha256": "SHA2-256", "sha384": "SHA2-384", "sha512": "SHA2-512"}


def _tunnel_options(t: XmlTunnel) -> dict:
    """One TunnelOptions entry as the CLI prints it: the tunnel's proposal as AWS's lists."""
    net = t.inside
    ike_enc, ike_auth, ike_dh = split_proposal(t.ike_proposal)
    esp_enc, esp_auth, esp_dh = split_proposal(t.esp_proposal)
    opt = {"OutsideIpAddress": t.vgw_outside}
    opt["TunnelInsideIpv6Cidr" if net.version == 6 else "TunnelInsideCidr"] = str(net)
    opt["PreSharedKey"] = t.psk
    opt["Phase1LifetimeSeconds"] = t.ike_lifetime
    opt["Phase2LifetimeSeconds"] = t.esp_lifetime
    opt["RekeyMarginTimeSeconds"] = t.rekey_margin
    opt["RekeyFuzzPercentage"] = t.rekey_fuzz
    opt["ReplayWindowSize"] = t.replay_window
    opt["DpdTimeoutSeconds"] = t.dpd_timeout or t.dpd_delay * t.dpd_retry
    opt["DpdTimeoutAction"] = t.dpd_timeout_action
    opt["Phase1EncryptionAlgorithms"] = [{"Value": _need(_J_ENC, ike_enc, "IKE encryption", "json")}]
    opt["Phase2EncryptionAlgorithms"] = [{"Value": _need(_J_ENC, esp_enc, "ESP encryption", "json")}]
    integ = ike_auth or next((p[3:] for p in t.ike_proposal.split("-") if p.startswith("prf")), None)
    opt["Phase1IntegrityAlgorithms"] = [{"Value": _need(_J_INTEG, integ, "IKE integrity", "json")}]
    if esp_auth:
        opt["Phase2IntegrityAlgorithms"] = [{"Value": _need(_J_INTEG, esp_auth, "ESP integrity", "json")}]
    opt["Phase1DHGroupNumbers"] = [{"Value": _need(awsxml.DH_GROUP, ike_dh, "DH group", "json")}]
    if esp_dh:
        opt["Phase2DHGroupNumbers"] = [{"Value": awsxml.DH_GROUP[esp_dh]}]
    if t.ike_versions:
        opt["IkeVersions"] = [{"Value": f"ikev{v}"} for v in t.ike_versions]
    if t.startup_action:
        opt["StartupAction"] = t.startup_action
    opt["LogOptions"] = {"CloudWatchLogOptions": {"LogEnabled": False}}
    return opt


def render_json(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], shape: VpnShape = VpnShape()) -> str:
    """`aws ec2 describe-vpn-connections --vpn-connection-ids ...` as the CLI prints it."""
    telemetry = [{"AcceptedRouteCount": 0, "LastStatusChange": "2026-11-22T00:00:00+00:00",
                  "OutsideIpAddress": t.vgw_outside, "Status": "DOWN", "StatusMessage": ""} for t in tunnels]
    v6_inside = any(t.inside.version == 6 for t in tunnels)
    v6_outside = any(":" in t.vgw_outside for t in tunnels)
    options = {"EnableAcceleration": False, "StaticRoutesOnly": shape.static}
    if v6_inside:
        options.update({"LocalIpv6NetworkCidr": "::/0", "RemoteIpv6NetworkCidr": "::/0"})
    else:
        options.update({"LocalIpv4NetworkCidr": "0.0.0.0/0", "RemoteIpv4NetworkCidr": "0.0.0.0/0"})
    options["OutsideIpAddressType"] = "Ipv6" if v6_outside else "PublicIpv4"
    options["TunnelInsideIpVersion"] = "ipv6" if v6_inside else "ipv4"
    options["TunnelOptions"] = [_tunnel_options(t) for t in tunnels]
    conn = {
        "CustomerGatewayConfiguration": awsxml.render(vpn_id, cgw_id, vgw_id, tunnels, static=shape.static),
        "CustomerGatewayId": cgw_id,
        "Category": "VPN",
        "State": "available",
        "Type": "ipsec.1",
        "VpnConnectionId": vpn_id,
        "TransitGatewayId" if vgw_id.startswith("tgw-") else "VpnGatewayId": vgw_id,
        "Options": options,
        "Routes": [{"DestinationCidrBlock": shape.onprem_cidr, "Source": "Static", "State": "available"}]
        if shape.static and shape.onprem_cidr else [],
        "Tags": [{"Key": "Name", "Value": "cgwd-lab"}],
        "VgwTelemetry": telemetry,
    }
    return json.dumps({"VpnConnections": [conn]}, indent=4) + "\n"


# ---------------------------------------------------------------------------------- lab

def _render_xml(vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], shape: VpnShape = VpnShape()) -> str:
    return awsxml.render(vpn_id, cgw_id, vgw_id, tunnels, static=shape.static)


_RENDER = {"xml": _render_xml, "json": render_json, "generic": render_generic,
           "yamaha": render_yamaha, "cisco-ios": render_cisco_ios}


def render(fmt: str, vpn_id: str, cgw_id: str, vgw_id: str, tunnels: list[XmlTunnel], shape: VpnShape = VpnShape()) -> str:
    """``vgw_id`` may be a ``tgw-...`` id (a Transit Gateway VPN connection)."""
    try:
        fn = _RENDER[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})") from None
    return fn(vpn_id, cgw_id, vgw_id, tunnels, shape)


def lab_tunnels(lab, *, ike_versions: tuple[int, ...] = (), startup_action: str | None = None,
                group: int = 0) -> list[XmlTunnel]:
    """The lab's VPN connection as AWS describes it (what ``Lab.aws_xml`` renders; ``group``
    1: a dual-stack lab's IPv6 one).

    ``ike_versions``/``startup_action``: what AWS's tunnel options say (the lab's IKE
    version and who initiates are the lab's; pass them when the AWS side runs IKEv2).
    """
    s = lab.spec
    out = []
    for t in lab.vpn_groups()[group]:
        a = t.spec
        out.append(XmlTunnel(
            cgw_outside=lab.cgw_public_outer, vgw_outside=t.aws_outer, inside_cidr=str(t.inside),
            cgw_asn=s.cgw_asn, vgw_asn=s.aws_asn, psk=t.psk,
            ike_proposal=a.ike_proposals.split(",")[0], esp_proposal=a.esp_proposals.split(",")[0],
            ike_lifetime=a.ike_lifetime, hold_time=a.hold_time, dpd_delay=int(a.dpd_delay.rstrip("s")),
            dpd_timeout=int(a.dpd_timeout.rstrip("s")), ike_versions=ike_versions, startup_action=startup_action))
    return out


def render_lab(lab, fmt: str, *, static: bool = False, ike_versions: tuple[int, ...] = (),
               startup_action: str | None = None, group: int = 0) -> str:
    """The lab's VPN connection in ``fmt``; ``static``: as a static VPN connection (the
    VPC's CIDR in the vendor texts' routes, the on-prem prefix as AWS's static route)."""
    shape = VpnShape(static, lab.spec.vpc_cidr, lab.spec.onprem_cidr) if static else VpnShape()
    tunnels = lab_tunnels(lab, ike_versions=ike_versions, startup_action=startup_action, group=group)
    gw = "tgw-0123456789abcdef0" if lab.spec.gateway == "tgw" else VGW_ID
    return render(fmt, lab.spec.vpn_id6 if group else lab.spec.vpn_id, CGW_ID, gw, tunnels, shape)


def write_lab(lab, fmt: str, path: str | None = None, **kw) -> str:
    """Write the lab's VPN connection in ``fmt`` (mode 0600: it holds the PSKs); returns the
    path.  ``kw``: as :func:`render_lab`."""
    path = path or os.path.join(lab.workdir, FILE_NAMES[fmt])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render_lab(lab, fmt, **kw))
    return path
