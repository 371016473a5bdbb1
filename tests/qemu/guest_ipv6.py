"""Runs INSIDE the QEMU guest (a kernel with ESP): IPv6 VPN connections through cgwd with the
kernel XFRM data path, in one boot.

    python tests/qemu/guest_ipv6.py --out DIR [--scenarios v6-in-v4,v6-in-v6]

``v6-in-v4``: an IPv6 VPN connection (inside /126s, BGP over IPv6, ``::/0`` selectors) over
IPv4 outside addresses, as most Transit Gateway deployments run it; ``v6-in-v6``: the same
over IPv6 outside addresses (ESP over IPv6, esp6). strongSwan on the AWS side uses the
kernel's IPsec (kernel-netlink, an xfrm interface per endpoint, plain ESP); cgwd runs with
``datapath = "kernel"``. Checks what the kernel says: IPv6 policies ``::/0`` with cgwd's
if_id and an ESP tunnel template between the outside addresses, the states, the xfrm
interface with the /126, BGP over IPv6 on both sides, the VPC's IPv6 route (protocol 157)
through the xfrm interfaces, ping6 and TCP over IPv6 with SHA-256 compared, the kernel's
counters, SIGTERM removing everything. Writes DIR/results.json like guest_xfrm.py (whose
helpers it uses); the host test is tests/qemu/test_kernel_ipv6_vpn.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from guest_xfrm import (T0, Results, collect_logs, kernel_config, links, load_modules, log, parse_policies,  # noqa: E402
                        redact, slow_lab_waits, start_and_wait, warm_page_cache, states, tag_of, tail)

from cgwd.lab.cli import cgwctl_status  # noqa: E402
from cgwd.lab.topology import Lab, LabSpec, leftovers  # noqa: E402

MODULES = ("esp4", "esp6", "xfrm_interface", "xfrm_user", "authenc", "cbc", "aes_generic", "aesni_intel",
           "sha1_generic", "hmac", "seqiv", "echainiv", "tun", "veth")
ESSENTIAL = ("esp4", "esp6", "xfrm_interface")

SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("LISTEN", flush=True)
s.settimeout(300); c, _ = s.accept(); c.settimeout(300); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""


def transfer(lab, total: int) -> tuple[bool, str]:
    """``total`` bytes on-prem -> VPC host over TCP/IPv6; the SHA-256 of both ends agree."""
    data = hashlib.sha512(b"cgwd").digest() * (total // 64)
    want = hashlib.sha256(data).hexdigest()
    srv = subprocess.Popen(lab.vpc.cmd([sys.executable, "-c", SERVER, lab.spec.vpc_host6]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        if srv.stdout.readline().strip() != "LISTEN":
            return False, "server did not listen"
        client = ("import socket, sys\nc = socket.create_connection((sys.argv[1], 5001), timeout=300)\n"
                  "c.sendall(sys.stdin.buffer.read()); c.close()\n")
        cli = subprocess.run(lab.onprem.cmd([sys.executable, "-c", client, lab.spec.vpc_host6]), input=data,
                             capture_output=True, timeout=600)
        out, _ = srv.communicate(timeout=120)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    parts = out.split()
    ok = cli.returncode == 0 and len(parts) == 2 and int(parts[0]) == len(data) and parts[1] == want
    return ok, f"sent {len(data)} sha256 {want}; server {out.strip()}; client {cli.stderr.decode()[-500:]}"


def ping6(lab, count: int) -> tuple[int, int, str]:
    proc = lab.onprem.run(["ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.3", "-W", "3", lab.spec.vpc_host6],
                          check=False, timeout=count * 4 + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    return (int(m.group(1)), int(m.group(2)), proc.stdout) if m else (count, 0, proc.stdout + proc.stderr)


def scenario(R: Results, scen: str, *, outer_ipv6: bool, prefix: str) -> None:
    spec = LabSpec(prefix=prefix, tunnels=2, ipv6=True, outer_ipv6=outer_ipv6, aws_kernel_ipsec=True,
                   aws_encap=False)
    lab = Lab(spec)
    t0 = time.monotonic()
    proc = None
    try:
        lab.up()
        R.timing(f"{scen}: lab up", time.monotonic() - t0)
        cfg = kernel_config(lab)
        t1 = time.monotonic()
        proc = start_and_wait(lab, cfg, timeout=600)
        R.timing(f"{scen}: cgwd ready (IKE + ESP + BGP over IPv6 + route)", time.monotonic() - t1)
        st = cgwctl_status(lab, as_json=True)
        R.check(scen, "datapath is the kernel's", st.get("datapath", {}).get("kind") == "kernel", st.get("datapath"))
        pols = parse_policies(lab.cgw.ip("xfrm policy", check=False).stdout)
        all_states = states(lab)
        for t, lt in zip(st["tunnels"], lab.tunnels):
            ifn = t["ifname"]
            tag = tag_of(lab, ifn)
            mine = [p for p in pols if p["if_id"] == tag]
            out_pol = next((p for p in mine if p["dir"] == "out"), None)
            R.check(scen, f"{ifn}: policies out/in/fwd ::/0 with if_id 0x{tag:x} and an ESP tunnel template",
                    sorted(p["dir"] for p in mine) == ["fwd", "in", "out"]
                    and all(p["src"] == "::/0" and p["dst"] == "::/0" and p["tmpl"] and p["tmpl"][2] == "esp"
                            for p in mine)
                    and out_pol and out_pol["tmpl"][:2] == (lab.cgw_outside, lt.aws_outer),
                    "\n".join(p["text"] for p in pols) or "(no policies)")
            sas = [s for s in all_states if s["if_id"] == tag]
            R.check(scen, f"{ifn}: a state pair between the outside addresses, plain ESP",
                    len(sas) == 2 and {(s["src"], s["dst"]) for s in sas} == {(lab.cgw_outside, lt.aws_outer),
                                                                             (lt.aws_outer, lab.cgw_outside)}
                    and all(s["encap"] is None and s["proto"] == "esp" for s in sas),
                    "\n".join(s["text"] for s in all_states))
            link = lab.cgw.ip(f"-d -o link show dev {ifn}", check=False).stdout
            addr = lab.cgw.ip(f"-o -6 addr show dev {ifn}", check=False).stdout
            R.check(scen, f"{ifn}: xfrm interface carries {lt.cgw_inside}/126",
                    re.search(rf"xfrm .*if_id 0x{tag:x}\b", link) and f"{lt.cgw_inside}/126" in addr, link + addr)
            proto = lt.bird.birdc("show", "protocols", "all", "cgw")
            R.check(scen, f"{ifn}: BGP over IPv6 established (cgwd, and AWS's BIRD with its ipv6 channel)",
                    t["bgp"]["state"] == "established" and t["bgp"].get("families") == ["ipv6/unicast"]
                    and "Established" in proto and "Channel ipv6" in proto, (t["bgp"].get("state"), proto[-800:]))
        routes = lab.cgw.ip(f"-N -6 route show {spec.vpc_cidr6}", check=False).stdout
        R.check(scen, "the VPC's IPv6 route through the xfrm interfaces with protocol 157",
                re.search(r"proto 157", routes) and "dev cgw-" in routes, routes)
        sent, got, out = (0, 0, "")
        for _ in range(30):
            sent, got, out = ping6(lab, 1)
            if got:
                break
            time.sleep(1)
        sent, got, out = ping6(lab, 6)
        R.check(scen, "ping6 on-prem -> VPC through the kernel's ESP", got == sent, out)
        ok, detail = transfer(lab, 4 * 1024 * 1024)
        R.check(scen, "TCP over IPv6 on-prem -> VPC, 4 MiB, SHA-256 equal at both ends", ok, detail)
        counted = [s for s in states(lab) if s["if_id"] in {tag_of(lab, t["ifname"]) for t in st["tunnels"]}]
        R.check(scen, "kernel XFRM counters moved in both directions",
                any(s["packets"] > 0 and s["dst"] == lab.cgw_outside for s in counted)
                and any(s["packets"] > 0 and s["src"] == lab.cgw_outside for s in counted),
                "\n".join(s["text"] for s in counted))
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        R.check(scen, "SIGTERM: cgwd exits with status 0", proc.returncode == 0, proc.returncode)
        R.check(scen, "SIGTERM: no XFRM state or policy left", not states(lab)
                and not parse_policies(lab.cgw.ip("xfrm policy", check=False).stdout),
                lab.cgw.ip("xfrm state", check=False).stdout + lab.cgw.ip("xfrm policy", check=False).stdout)
        R.check(scen, "SIGTERM: no cgw-* interface and no IPv6 route of ours left",
                not [n for n in links(lab) if n.startswith("cgw-")]
                and not lab.cgw.ip("-6 route show proto 157", check=False).stdout.strip(),
                lab.cgw.ip("-6 route show proto 157", check=False).stdout + " ".join(links(lab)))
        logtext = open(os.path.join(lab.workdir, "cgwd.log"), errors="replace").read()
        R.check(scen, "no traceback in cgwd's log", "Traceback" not in logtext, tail(os.path.join(lab.workdir, "cgwd.log")))
    except Exception as exc:  # noqa: BLE001 - recorded for the host test, with logs
        R.scen(scen)["error"] = redact("".join(traceback.format_exception(exc)))[-4000:]
        log(f"{scen}: ERROR {exc}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        try:
            collect_logs(R, scen, lab)
            R.scen(scen)["logs"]["cgw IPv6 routes"] = lab.cgw.ip("-6 route", check=False).stdout
        except Exception as exc:  # noqa: BLE001
            R.scen(scen)["logs"]["collect"] = repr(exc)
        lab.down()
        R.check(scen, "lab torn down (no namespaces, processes, directories left)", not leftovers(prefix),
                leftovers(prefix))
        R.timing(f"{scen}: total", time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios", default="v6-in-v4,v6-in-v6")
    ap.add_argument("--prefix", default="q6")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    R = Results(os.path.join(args.out, "results.json"))
    R.data["kernel"] = os.uname().release
    log(f"kernel {os.uname().release}, {os.cpu_count()} CPUs")
    import guest_xfrm

    import cgwd.lab.cli as lab_cli
    guest_xfrm.MODULES = MODULES
    load_modules(R)
    # TCG on a shared 2-core host: a `cgwctl status` (a Python start) took over 15 s, an
    # import over 60 s, charon's vici socket over 80 s; only deadlines grow, waits still poll
    slow_lab_waits(8.0)
    lab_cli.STATUS_TIMEOUT, lab_cli.IMPORT_TIMEOUT = 120.0, 300.0
    warm_page_cache(R)
    missing = [m for m in ESSENTIAL if R.data["modules"].get(m) != "ok"]
    if missing:
        R.data["fatal"] = f"cannot load {missing}: {[R.data['modules'].get(m) for m in missing]}"
        R.save()
        return 1
    for name in (n.strip() for n in args.scenarios.split(",")):
        if name == "v6-in-v4":
            scenario(R, name, outer_ipv6=False, prefix=f"{args.prefix}a")
        elif name == "v6-in-v6":
            scenario(R, name, outer_ipv6=True, prefix=f"{args.prefix}b")
        else:
            R.data.setdefault("unknown", []).append(name)
    R.data["done"] = True
    R.timing("guest script total", time.monotonic() - T0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
