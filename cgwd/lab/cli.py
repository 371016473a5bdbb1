"""`cgwctl lab up|status|down|run`: the built-in lab for evaluating cgwd without AWS.

`up` builds two AWS endpoints (strongSwan + BIRD as AS 64512) in network namespaces,
writes the VPN connection's configuration as AWS's API returns it (XML), imports it with
`cgwctl import aws`, runs cgwd as the customer gateway, prints `cgwctl status` and proves
traffic from the on-prem host to the VPC host. `--stack reference` runs strongSwan + BIRD on
the customer side instead (the reference the benchmarks compare against).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from .netns import LabError, Netns, list_netns, run, stop_process, wait_for
from .topology import WORKDIR_MARK, Lab, LabSpec, destroy

DEFAULT_PREFIX = "cgwlab"
# seconds for one `cgwctl status` and one `cgwctl import aws` (a slow QEMU guest raises them)
STATUS_TIMEOUT = 15.0
IMPORT_TIMEOUT = 60.0


def _state_path(prefix: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(tempfile.gettempdir(), f"{WORKDIR_MARK}{prefix}-*", "lab.json")))
    return hits[-1] if hits else None


def cgwd_command(config: str, socket_path: str) -> list[str]:
    return [sys.executable, "-m", "cgwd.daemon", "--config", config, "--socket", socket_path]


def cgwctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cgwd.cli", *args]


def import_config(lab: Lab) -> str:
    """AWS downloads -> cgwd config through the operator's own command, `cgwctl import aws` (a
    dual-stack lab's second, IPv6, VPN connection with ``--merge``).

    An IKEv2 lab (the XML states no IKE version) is written as describe-vpn-connections JSON,
    whose tunnel options say IKEv2 and who initiates (StartupAction "start" when the AWS
    endpoints initiate)."""
    out = os.path.join(lab.workdir, "cgwd.toml")
    for group, tunnels in enumerate(lab.vpn_groups()):
        if lab.spec.ike_version == 2:
            from . import awsvendor

            start = any(a.start_action == "start" for a in lab.spec.aws)
            path = os.path.join(lab.workdir, f"aws-vpn-{group}.json") if group else None
            xml = awsvendor.write_lab(lab, "json", path, ike_versions=(2,), startup_action="start" if start else "add",
                                      static=lab.spec.static, group=group)
        else:
            xml = lab.write_aws_xml(group=group)
        v6 = tunnels[0].ipv6
        if lab.spec.static:  # no BGP: the VPC side's CIDRs are given, nothing is advertised
            args = ["import", "aws", xml, "--static-route", lab.spec.vpc_cidr6 if v6 else lab.spec.vpc_cidr]
        else:
            args = ["import", "aws", xml, "--advertise", lab.spec.onprem_cidr6 if v6 else lab.spec.onprem_cidr]
        args += ["-o", out] + (["--merge", out] if group else [])
        if lab.spec.nat:
            args += ["--local-address", lab.cgw_outside]
        proc = run(cgwctl_command(*args), check=False, timeout=IMPORT_TIMEOUT)
        if proc.returncode != 0:
            raise LabError(f"cgwctl import aws failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return out


def start_cgwd(lab: Lab, config: str, *, extra_env: dict | None = None) -> subprocess.Popen:
    sock = os.path.join(lab.workdir, "cgwd.sock")
    env = dict(os.environ)
    env.update(extra_env or {})
    proc = lab.cgw.popen(cgwd_command(config, sock), log_path=os.path.join(lab.workdir, "cgwd.log"), env=env)
    lab.procs.append(proc)
    return proc




def cgwctl_status(lab: Lab, *, as_json: bool = False) -> str | dict:
    sock = os.path.join(lab.workdir, "cgwd.sock")
    args = ["status", "--socket", sock] + (["--json"] if as_json else [])
    proc = run(cgwctl_command(*args), check=False, timeout=STATUS_TIMEOUT)
    if as_json:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc.stdout + proc.stderr


def cgwd_ready(lab: Lab) -> bool:
    """Every tunnel's IPsec SA installed and BGP established (static: its static routes
    offered), and the VPC route through a tunnel in the kernel."""
    st = cgwctl_status(lab, as_json=True)
    tunnels = st.get("tunnels") or []
    if len(tunnels) != len(lab.tunnels):
        return False
    if lab.spec.static:
        routing_ok = [t.get("static", {}).get("state") in ("up", "hold-down") for t in tunnels]
    else:
        routing_ok = [t.get("bgp", {}).get("state") == "established" for t in tunnels]
    ok = all(t.get("ipsec", {}).get("state") == "installed" and r for t, r in zip(tunnels, routing_ok))
    return ok and all(lab.vpc_prefix(g[0]) in lab.cgw_routes(lab.vpc_prefix(g[0])) for g in lab.vpn_groups())


def reference_ready(lab: Lab) -> bool:
    if lab.spec.static:
        return False  # the reference stack is BGP (BIRD) only
    return all(lab.aws_bgp_established(t.index) for t in lab.tunnels) and lab.spec.vpc_cidr in lab.cgw_routes()


def cmd_up(args) -> int:
    if args.static and args.stack == "reference":
        raise LabError("--static runs cgwd as the customer gateway (the reference stack is BGP only)")
    if args.dual_stack:
        args.tunnels = 4
    try:
        spec = LabSpec(prefix=args.prefix, tunnels=args.tunnels, nat=args.nat, static=args.static,
                       ike_version=args.ike, ipv6=args.ipv6, outer_ipv6=args.outer_ipv6, dual_stack=args.dual_stack)
    except ValueError as exc:  # a combination the lab does not build: said in one line
        raise LabError(str(exc)) from None
    t0 = time.monotonic()
    lab = Lab(spec)
    aws = "strongSwan only, static routing" if spec.static else f"strongSwan + BIRD AS {spec.aws_asn}"
    print(f"lab: building namespaces {spec.prefix}-* (AWS endpoints: {aws})")
    lab.up()
    ok = False
    try:
        stack = args.stack
        if stack == "cgwd":
            config = import_config(lab)
            fmt = "describe-vpn-connections JSON, IKEv2" if spec.ike_version == 2 else "XML"
            print(f"lab: AWS configuration ({fmt}) imported with `cgwctl import aws` -> {config}")
            proc = start_cgwd(lab, config)
            print(f"lab: cgwd started in namespace {lab.cgw.name} (log: {lab.workdir}/cgwd.log)")
            try:
                wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), args.timeout, interval=0.5,
                         what="cgwd: both tunnels installed, BGP established, VPC route in the kernel")
            except LabError as exc:
                print(f"lab: {exc}")
            if proc.poll() is not None:
                print(f"lab: cgwd exited with status {proc.returncode}; last log lines:")
                print(_tail(os.path.join(lab.workdir, "cgwd.log")))
            print(cgwctl_status(lab))
        else:
            print("lab: running the reference stack (strongSwan + BIRD) as the customer gateway")
            lab.start_reference()
            try:
                wait_for(lambda: reference_ready(lab), args.timeout, interval=0.5, what="reference stack up")
            except LabError as exc:
                print(f"lab: {exc}")
            print(lab.ref_charon.list_sas())
            print(lab.ref_bird.birdc("show", "protocols"))
        ok = True
        for group in lab.vpn_groups():
            v6 = group[0].ipv6
            src, dst = (spec.onprem_host6, spec.vpc_host6) if v6 else (spec.onprem_host, spec.vpc_host)
            routes = lab.cgw_routes(lab.vpc_prefix(group[0])).strip()
            print(f"lab: routes to the VPC in {lab.cgw.name}:\n  " + (routes or "(none)"))
            try:
                # the VPC side learns the return route a moment after BGP is up
                wait_for(lambda: lab.ping(1, dst=dst, timeout=1), 20, interval=0.5, what=f"a ping to {dst}")
                good = lab.ping(3, dst=dst)
            except LabError:
                good = False
            ok = ok and good
            took = time.monotonic() - t0
            verdict = "OK" if good else "FAILED"
            print(f"lab: ping {src} (on-prem) -> {dst} (VPC) through the tunnel: {verdict} ({took:.1f}s after start)")
    except BaseException:
        lab.down()
        raise
    if args.keep:
        print(f"lab: left running; `cgwctl lab status --prefix {spec.prefix}`, "
              f"`cgwctl lab down --prefix {spec.prefix}`")
        with open(os.path.join(lab.workdir, "lab.json")) as f:
            state = json.load(f)
        state["stack"] = args.stack
        with open(os.path.join(lab.workdir, "lab.json"), "w") as f:
            json.dump(state, f)
    else:
        lab.down()
        print("lab: torn down")
    return 0 if ok else 1


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def cmd_status(args) -> int:
    path = _state_path(args.prefix)
    if not path:
        print(f"lab: no lab with prefix {args.prefix!r} is running")
        return 1
    with open(path) as f:
        state = json.load(f)
    workdir = state["workdir"]
    cgw = Netns(f"{args.prefix}-cgw")
    if state.get("stack") == "reference":
        print(run(["swanctl", "--list-sas", "--uri", f"unix://{workdir}/reference/charon.vici"], check=False).stdout)
        print(run(["birdc", "-s", f"{workdir}/reference/bird.ctl", "show", "protocols"], check=False).stdout)
    else:
        proc = run(cgwctl_command("status", "--socket", os.path.join(workdir, "cgwd.sock")), check=False)
        print(proc.stdout + proc.stderr)
    print(f"routes in {cgw.name}:\n" + cgw.ip("route", check=False).stdout)
    if state.get("ipv6") or state.get("dual_stack") or state.get("outer_ipv6"):
        print(f"IPv6 routes in {cgw.name}:\n" + cgw.ip("-6 route", check=False).stdout)
    onprem = Netns(f"{args.prefix}-onprem")
    spec = LabSpec()
    dsts = ([spec.vpc_host] if not state.get("ipv6") else []) + (
        [spec.vpc_host6] if state.get("ipv6") or state.get("dual_stack") else [])
    for dst in dsts:
        p = onprem.run(["ping", "-n", "-c", "2", "-W", "1", dst], check=False)
        print(p.stdout.strip().splitlines()[-2] if p.stdout.strip() else p.stderr)
    return 0


def cmd_down(args) -> int:
    removed = destroy(args.prefix)
    print("lab: removed " + (", ".join(removed) if removed else "nothing (no lab running)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cgwctl lab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab and bring the VPN up (left running)")
    run_ = sub.add_parser("run", help="like up, then tear everything down (exit 0 when traffic flowed)")
    for sp in (up, run_):
        sp.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix (default %(default)s)")
        sp.add_argument("--tunnels", type=int, default=2, help="AWS endpoints/tunnels (1-4, default 2)")
        sp.add_argument("--nat", action="store_true", help="put the customer gateway behind a NAT router")
        sp.add_argument("--ike", type=int, choices=(1, 2), default=1,
                        help="IKE version of the AWS endpoints (default %(default)s; 2: strongSwan IKEv2)")
        sp.add_argument("--static", action="store_true",
                        help="a static-routing VPN connection (no BGP; AWS side: strongSwan only)")
        sp.add_argument("--ipv6", action="store_true",
                        help="an IPv6 VPN connection (inside /126s, BGP over IPv6, ::/0 selectors; TGW)")
        sp.add_argument("--outer-ipv6", action="store_true",
                        help="IPv6 outside addresses for IKE and ESP (with IPv4 or, with --ipv6, IPv6 inside)")
        sp.add_argument("--dual-stack", action="store_true",
                        help="an IPv4 and an IPv6 VPN connection at once (four tunnels)")
        sp.add_argument("--stack", choices=("cgwd", "reference"), default="cgwd",
                        help="what runs as the customer gateway (default cgwd)")
        sp.add_argument("--timeout", type=float, default=60, help="seconds to wait for the VPN (default 60)")
    up.set_defaults(keep=True)
    run_.set_defaults(keep=False)
    st = sub.add_parser("status", help="cgwctl status, routes and a ping in a running lab")
    st.add_argument("--prefix", default=DEFAULT_PREFIX)
    dn = sub.add_parser("down", help="remove a lab (namespaces, processes, files), also after a crash")
    dn.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("cgwctl lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        if args.cmd in ("up", "run"):
            return cmd_up(args)
        return {"status": cmd_status, "down": cmd_down}[args.cmd](args)
    except LabError as exc:
        print(f"cgwctl lab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
