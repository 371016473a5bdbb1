"""LAN-side BGP (issue 17): cgwd peers with the on-prem routers.

* ``config.py``  ``[[lan_neighbor]]``: ``LanNeighborConfig``, the import filter (prefix rules
  with ge/le), validation.
* ``core.py``    sans-IO: what crosses between the LAN and the VPN connections. The VPC
  prefixes the tunnels carry now (the VPNs' routing tables' selection) go to the routers,
  next hop self; the prefixes the routers give, through each one's import filter, go to AWS
  beside the static ``advertise`` list, within the gateway's limit (100 to a VGW, 1000 to a
  Transit Gateway): over it, the newest prefixes are held back (counted, logged, in status).
* ``part.py``    asyncio: one ``LanNeighbor`` (BgpSession + BgpSpeaker, TCP MD5) per router,
  and ``LanBgp``, the daemon's one object for all of them.
"""
