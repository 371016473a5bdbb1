"""``cgwctl health`` and ``cgwctl ha ...`` (wired into :mod:`cgwd.cli`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import HaConfig

DEFAULT_HA_CONFIG = "/etc/cgwd/ha.toml"

HEALTH_HELP = """\
Exit status from the tunnels' real state, for keepalived's track_script and any monitor,
with one line saying why:
  0  up: every tunnel of every VPN carries (IKE, SA installed, BGP established or static
     routes offered), and each VPN carries its prefixes
  0  degraded (a VPN has lost redundancy; 1 with --strict), with a warning line
  1  down: some VPN carries nothing
  2  cgwd not running, or no answer within --timeout
"""

HA_HELP = """\
High availability with a second cgwd box (keepalived, EC2 route tables).  The HA file
(default /etc/cgwd/ha.toml, or $CGWD_HA_CONFIG) is this box's: [ha] failback,
[ha.vrrp] (keepalived), [ha.ec2] (the route-table takeover).  See examples/keepalived/.
"""

def add_parsers(sub, sock_opt) -> None:
    sp = sub.add_parser("health", help="exit status from the tunnels' state (keepalived track_script)",
                        description=HEALTH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--strict", action="store_true", help="degraded (a VPN lost redundancy) exits 1, not 0")
    sp.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                    help="seconds to wait for cgwd's answer (default 10; exit 2 after it)")
    sp.add_argument("--json", action="store_true", help="print the verdict per VPN as JSON")
    sock_opt(sp)
    hp = sub.add_parser("ha", help="HA actions: notify, check, status, keepalived", description=HA_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    hp.add_argument("--config", default=None, help=f"the HA file (default {DEFAULT_HA_CONFIG})")
    hsub = hp.add_subparsers(dest="ha_cmd", metavar="SUBCOMMAND")
    n = hsub.add_parser("notify", help="keepalived notify hook: run the actions of STATE",
                        description="Run the configured actions for a VRRP transition and record it. "
                        "STATE is MASTER, BACKUP, FAULT or STOP (keepalived's notify_* hooks), or keepalived's "
                        "`notify` arguments INSTANCE NAME STATE PRIORITY. MASTER takes the VPC route "
                        "tables' entries (and the Elastic IP) when [ha.ec2] is set. Exit 1 when an action failed.")
    n.add_argument("args", nargs="+", metavar="STATE")
    c = hsub.add_parser("check", help="check the HA setup (IMDS, credentials, source/dest check, route plan)",
                        description="Check the HA file and, with [ha.ec2], the instance metadata, the "
                        "credentials, that the source/destination check is off (DescribeInstanceAttribute) "
                        "and which routes a takeover would change (nothing is changed). Exit 1 on a problem.")
    c.add_argument("--policy", action="store_true", help="also print the IAM policy the instance role needs")
    hsub.add_parser("status", help="the last transition recorded by `ha notify` and what its actions did")
    k = hsub.add_parser("keepalived", help="write keepalived.conf for this box from [ha.vrrp]",
                        description="Print keepalived.conf for this box: unicast peers, `cgwctl health` as "
                        "track_script (FAULT on failure), notify hooks, nopreempt or preempt_delay by failback.")
    k.add_argument("--cgwctl", default="/usr/local/bin/cgwctl", help="path of cgwctl in the hooks")


def _ha_config(args) -> tuple["HaConfig | None", int]:
    from ..config import ConfigError
    from .config import load_ha_config

    path = args.config or os.environ.get("CGWD_HA_CONFIG") or DEFAULT_HA_CONFIG
    try:
        return load_ha_config(path), 0
    except ConfigError as e:
        for issue in e.errors:
            print(str(issue), file=sys.stderr)
        return None, 1


def cmd_health(args, socket_path: str) -> int:
    from ..control_client import ControlClient, ControlUnavailable
    from .health import evaluate, unavailable

    try:
        resp = ControlClient(socket_path).request({"cmd": "status"}, timeout=args.timeout)
    except ControlUnavailable as e:
        resp, report = None, unavailable(str(e))
    if resp is None:
        pass
    elif not resp.get("ok"):
        report = unavailable(f"cgwd refused the status request: {resp.get('error', '?')}")
    else:
        report = evaluate(resp.get("status"))
    code = report.exit_code(args.strict)
    if args.json:
        print(json.dumps({"health": report.health.word, "exit": code, "reason": report.reason,
                          "vpns": [{"name": v.name, "health": v.health.word, "tunnels_up": list(v.tunnels_up),
                                    "tunnels_down": list(v.tunnels_down), "carried": v.carried,
                                    "unreachable": list(v.unreachable), "why": v.why} for v in report.vpns]}))
    elif report.health.word == "degraded" and code == 0:
        print(f"warning: {report.line}")
    else:
        print(report.line)
    return code


def cmd_ha(args, parser) -> int:
    if args.ha_cmd is None:
        parser.parse_args(["ha", "--help"])
        return 2
    cfg, rc = _ha_config(args)
    if cfg is None:
        return rc
    if args.ha_cmd == "notify":
        return _notify(args, cfg)
    if args.ha_cmd == "check":
        return _check(args, cfg)
    if args.ha_cmd == "status":
        return _status(cfg)
    return _keepalived(args, cfg)


def _notify(args, cfg: "HaConfig") -> int:
    from .notify import parse_state, run_notify

    try:
        state = parse_state(args.args)
    except ValueError as e:
        print(f"cgwctl ha notify: {e}", file=sys.stderr)
        return 2
    try:
        out = run_notify(state, cfg)
    except OSError as e:
        print(f"cgwctl ha notify: cannot record the state in {cfg.state_dir}: {e.strerror}", file=sys.stderr)
        return 1
    for line in out.lines:
        print(f"{state.value}: {line}", file=sys.stdout if out.ok else sys.stderr)
    return 0 if out.ok else 1


def _check(args, cfg: "HaConfig") -> int:
    from .ec2 import IAM_POLICY, source_dest_check
    from .notify import Takeover
    from .retry import HaError

    problems = 0
    print(f"HA file {cfg.source}: OK (failback {cfg.failback})")
    for w in cfg.warnings:
        print(f"warning: {w}")
    v = cfg.vrrp
    if v is not None:
        print(f"vrrp: {v.interface} vrid {v.virtual_router_id} priority {v.priority}, "
              f"{v.unicast_src_ip} -> {', '.join(v.unicast_peer)}, VIP {', '.join(v.virtual_ipaddress)}")
    e = cfg.ec2
    if e is not None:
        t = Takeover(cfg)
        try:
            ident, eni, api, source = t.context()
            print(f"ec2: instance {ident.instance_id} in {e.region or ident.region}, interface {eni} "
                  f"(IMDSv2 at {e.imds_url}), credentials: {source}")
            endpoint = getattr(getattr(api, "meta", None), "endpoint_url", e.endpoint_url)
            print(f"ec2: API endpoint {endpoint}")
            on = source_dest_check(api, ident.instance_id)
            if on:
                problems += 1
                print(f"problem: the source/destination check of {ident.instance_id} is ON: the instance drops "
                      f"traffic not addressed to it; turn it off: aws ec2 modify-instance-attribute "
                      f"--instance-id {ident.instance_id} --no-source-dest-check")
            else:
                print(f"ec2: source/destination check of {ident.instance_id}: off (good)")
            ok, lines = t.run(dry_run=True)
            for line in lines[1:]:
                print(line)
            if not ok:
                problems += 1
        except HaError as err:
            problems += 1
            print(f"problem: {err}")
        if args.policy or problems:
            print("the instance role needs this IAM policy (scope the route tables by ARN):")
            print(json.dumps(IAM_POLICY, indent=2))
    print("OK" if not problems else f"{problems} problem{'s' if problems != 1 else ''}")
    return 0 if not problems else 1


def _status(cfg: "HaConfig") -> int:
    from .notify import read_state

    st = read_state(cfg)
    if st is None:
        print(f"no transition recorded in {cfg.state_dir}/ha.json yet")
        return 1
    import time

    ago = time.time() - float(st.get("since", 0))
    print(f"state {st.get('state')} since {ago:.0f}s ago (previous {st.get('previous')}, "
          f"{st.get('transitions')} transitions), actions {'ok' if st.get('ok') else 'FAILED'}")
    for line in st.get("actions") or []:
        print(f"  {line}")
    return 0


def _keepalived(args, cfg: "HaConfig") -> int:
    from .keepalived import render

    try:
        sys.stdout.write(render(cfg, cgwctl=args.cgwctl, socket=args.socket if getattr(args, "socket", None) else None,
                                ha_config=os.path.abspath(args.config) if args.config else None))
    except ValueError as e:
        print(f"cgwctl ha keepalived: {e}", file=sys.stderr)
        return 1
    return 0
