"""Sample configuration for the unit tier (a module of its own: `from conftest import` finds
whichever tier's conftest pytest loaded last)."""

PSK1 = "Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0"
PSK2 = "Ab3_dE6.gH9jK2mN5pQ8rS1tU4vW7xY0"

BASE = f"""\
[daemon]
log_level = "info"

[[vpn]]
name = "vpn-0123456789abcdef0"
local_address = "203.0.113.2"
local_asn = 65000
remote_asn = 64512
advertise = ["10.200.0.0/24"]

  [[vpn.tunnel]]
  name = "tun1"
  remote_address = "198.51.100.2"
  psk = "{PSK1}"
  inside_cidr = "169.254.10.0/30"

  [[vpn.tunnel]]
  name = "tun2"
  remote_address = "198.51.100.3"
  psk = "{PSK2}"
  inside_cidr = "169.254.11.0/30"
"""
