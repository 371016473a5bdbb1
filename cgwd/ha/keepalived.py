"""keepalived configurations for the two boxes of a pair (``cgwctl ha keepalived``).

The design, and why:

* **Unicast peers** (``unicast_src_ip``/``unicast_peer``): EC2 has no multicast, and a
  LAN's switches need not pass it either. Allow IP protocol 112 (VRRP) between the boxes.
* **Health** (``track_script`` running ``cgwctl health``) with ``weight 0``: any failure
  (tunnels down: exit 1; cgwd dead or not answering: exit 2) puts the instance into FAULT,
  which sends a priority-0 advertisement, so the peer takes over within one advertisement
  instead of waiting for three to be missed. A weight (lowering the priority) would not do
  with ``nopreempt``: the peer never preempts a MASTER of lower priority. ``init_fail``
  keeps a box that has just started in FAULT until its tunnels are up.
* **No flap on return**, by ``failback``:
  ``none`` (default): both boxes start as BACKUP with ``nopreempt``; the survivor keeps the
  role when the other returns (the higher priority only decides the first election), so
  traffic moves once per failure, not twice. ``preempt``: the primary (higher priority)
  takes the role back, ``preempt_delay`` seconds after its health passes again, so it
  returns only once its tunnels have carried for a while; this moves traffic a second time
  (short) and suits a primary that is the better path (an AWS region's closer endpoint,
  bigger instance).
* **Notify hooks** run ``cgwctl ha notify STATE`` (the EC2 takeover on MASTER).
"""

from __future__ import annotations

import shlex

from .config import HaConfig

__all__ = ["render"]


def render(cfg: HaConfig, *, cgwctl: str = "/usr/local/bin/cgwctl", socket: str | None = None,
           ha_config: str | None = None, instance: str = "CGWD", router_id: str | None = None) -> str:
    """keepalived.conf for this box from its ``[ha.vrrp]`` (raises ValueError without one)."""
    v = cfg.vrrp
    if v is None:
        raise ValueError(f"{cfg.source}: no [ha.vrrp] table: nothing to write keepalived.conf from")
    base = cgwctl + (f" --socket {shlex.quote(socket)}" if socket else "")
    ha = f"{cgwctl} ha" + (f" --config {shlex.quote(ha_config)}" if ha_config else "")
    health_timeout = max(1, int(v.health_timeout))
    lines = [
        f"# keepalived.conf for the cgwd pair (written by `cgwctl ha keepalived`, failback = {cfg.failback})",
        "global_defs {",
        f"    router_id {router_id or 'cgwd-' + v.unicast_src_ip.replace(':', '-')}",
        "    script_user root",
        "    enable_script_security",
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        "}",
        "",
        "vrrp_script chk_cgwd {",
        f"    script \"{base} health --timeout {health_timeout}\"",
        f"    interval {v.health_interval:g}",
        f"    timeout {health_timeout + 1}",
        f"    fall {v.health_fall}",
        f"    rise {v.health_rise}",
        "    weight 0",
        "    init_fail",
        "}",
        "",
        f"vrrp_instance {instance} {{",
        "    state BACKUP",
        f"    interface {v.interface}",
        f"    virtual_router_id {v.virtual_router_id}",
        f"    priority {v.priority}",
        f"    advert_int {v.advert_int:g}",
    ]
    if cfg.failback == "none":
        lines.append("    nopreempt")
    else:
        lines.append(f"    preempt_delay {v.preempt_delay}")
    lines += [
        f"    unicast_src_ip {v.unicast_src_ip}",
        "    unicast_peer {",
        *(f"        {p}" for p in v.unicast_peer),
        "    }",
        "    virtual_ipaddress {",
        *(f"        {a} dev {v.interface}" for a in v.virtual_ipaddress),
        "    }",
        "    track_script {",
        "        chk_cgwd",
        "    }",
        *(f"    notify_{s.lower()} \"{ha} notify {s}\"" for s in ("MASTER", "BACKUP", "FAULT", "STOP")),
        "}",
        "",
    ]
    return "\n".join(lines)
