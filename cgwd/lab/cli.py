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


def _state_path(prefix: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(tempfile.gettempdir(), f"{WORKDIR_MARK}{prefix}-*", "lab.json")))
    return hits[-1] if hits else None


def cgwd_command(config: str, socket_path: str) -> list[str]:
    return [sys.executable, "-m", "cgwd.daemon", "--config", config, "--socket", socket_path]


def cgwctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cgwd.cli", *args]


def import_config(lab: Lab) -> str:
    """AWS XML -> cgwd config through the operator's own command, `cgwctl import aws`."""
    xml = lab.write_aws_xml()
    out = os.path.join(lab.workdir, "cgwd.toml")
    args = ["import", "aws", xml, "--advertise", lab.spec.onprem_cidr, "-o", out]
    if lab.spec.nat:
        args += ["--local-address", lab.cgw_outside]
    proc = run(cgwctl_command(*args), check=False)
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
    proc = run(cgwctl_command(*args), check=False, timeout=15)
    if as_json:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc.stdout + proc.stderr


def cgwd_ready(lab: Lab) -> bool:
    """Every tunnel's IPsec SA installed and BGP established, and the VPC route in the kernel."""
    st = cgwctl_status(lab, as_json=True)
    tunnels = st.get("tunnels") or []
    if len(tunnels) != len(lab.tunnels):
        return False
    ok = all(t.get("ipsec", {}).get("state") == "installed" and t.get("bgp", {}).get("state") == "established"
             for t in tunnels)
    return ok and lab.spec.vpc_cidr in lab.cgw_routes()


def reference_ready(lab: Lab) -> bool:
    return all(lab.aws_bgp_established(t.index) for t in lab.tunnels) and lab.spec.vpc_cidr in lab.cgw_routes()


def cmd_up(args) -> int:
    spec = LabSpec(prefix=args.prefix, tunnels=args.tunnels, nat=args.nat)
    t0 = time.monotonic()
    lab = Lab(spec)
    print(f"lab: building namespaces {spec.prefix}-* (AWS endpoints: strongSwan + BIRD AS {spec.aws_asn})")
    lab.up()
    ok = False
    try:
        stack = args.stack
        if stack == "cgwd":
            config = import_config(lab)
            print(f"lab: AWS configuration (XML) imported with `cgwctl import aws` -> {config}")
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
        print(f"lab: routes to the VPC in {lab.cgw.name}:\n  " + (lab.cgw_routes().strip() or "(none)"))
        try:
            lab.wait_ping(timeout=20)  # the VPC side learns the return route a moment after BGP is up
            ok = lab.ping(3)
        except LabError:
            ok = False
        took = time.monotonic() - t0
        verdict = "OK" if ok else "FAILED"
        print(f"lab: ping {spec.onprem_host} (on-prem) -> {spec.vpc_host} (VPC) through the tunnel: {verdict}"
              f" ({took:.1f}s after start)")
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
    onprem = Netns(f"{args.prefix}-onprem")
    p = onprem.run(["ping", "-n", "-c", "2", "-W", "1", "10.100.0.10"], check=False)
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
