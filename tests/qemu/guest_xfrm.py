"""Runs INSIDE the QEMU guest (a kernel with ESP): every kernel-XFRM scenario in one boot.

    python tests/qemu/guest_xfrm.py --out DIR [--scenarios direct,nat]

Builds the lab in namespaces with strongSwan on the AWS side using the KERNEL's IPsec
(kernel-netlink, an xfrm interface with if_id per endpoint, plain ESP unless NAT), runs cgwd
with ``datapath = "kernel"`` as the customer gateway and checks what the kernel says:
``ip xfrm state`` / ``ip xfrm policy`` / the xfrm interface / routes / ping / counters, a
phase-2 rekey (make-before-break), stale state left by a SIGKILLed cgwd removed at the next
start, and SIGTERM removing everything. The ``static`` scenario runs a static-routing VPN
connection (no BGP; AWS answers on tunnel 2 while cgwd sends on tunnel 1) and fails it over
when tunnel 1's endpoint vanishes. Writes DIR/results.json (checks with details, no key
material) and DIR/guest.log; the host test (tests/qemu/test_kernel_xfrm.py) asserts on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from cgwd.esp import xfrm as cgw_xfrm  # noqa: E402
from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd  # noqa: E402
from cgwd.lab.netns import LabError, run, wait_for  # noqa: E402
from cgwd.lab.topology import AwsTunnelSpec, Lab, LabSpec, leftovers  # noqa: E402

def slow_lab_waits(factor: float = float(os.environ.get("CGWD_QEMU_SLOW", "6"))) -> None:
    """TCG runs the guest several times slower than the host (and the host is shared): give
    the lab's start-up waits (charon's vici socket, BIRD's control socket, ...) and its
    commands (`cgwctl import aws`, `cgwctl status`) ``factor`` times their host-tuned
    deadlines (``CGWD_QEMU_SLOW``: another factor on a loaded host). Only deadlines change;
    every wait still polls."""
    import cgwd.lab.bird as bird_mod
    import cgwd.lab.cli as cli_mod
    import cgwd.lab.strongswan as ss_mod
    import cgwd.lab.topology as topo_mod

    def slow_wait_for(predicate, timeout, *args, **kw):
        return wait_for(predicate, timeout * factor, *args, **kw)

    for mod in (bird_mod, ss_mod, topo_mod):
        mod.wait_for = slow_wait_for
    # and the lab's short commands (`cgwctl import aws`, `cgwctl status`: a Python start-up
    # each, over a minute under TCG on a loaded machine)

    def slow_run(cmd, *args, timeout: float = 60, **kw):
        return run(cmd, *args, timeout=timeout * factor, **kw)

    cli_mod.run = slow_run


MODULES = ("esp4", "xfrm_interface", "ip_vti", "xfrm_user", "authenc", "cbc", "aes_generic", "aesni_intel",
           "sha1_generic", "sha256_generic", "sha512_generic", "hmac", "gcm", "ghash_generic", "seqiv",
           "echainiv", "ctr", "tun", "veth", "iptable_nat", "xt_MASQUERADE", "nf_nat")
ESSENTIAL = ("esp4", "xfrm_interface")
KEY_RE = re.compile(r"0x[0-9a-fA-F]{16,}")

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[guest {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def redact(text: str) -> str:
    """`ip xfrm state` prints keys: never let them into results or logs."""
    return KEY_RE.sub("0x<key>", text)


class Results:
    def __init__(self, path: str):
        self.path = path
        self.data: dict = {"modules": {}, "timings": {}, "scenarios": {}, "figures": {}}

    def scen(self, name: str) -> dict:
        return self.data["scenarios"].setdefault(name, {"checks": {}, "error": None, "logs": {}})

    def check(self, scen: str, name: str, ok, detail="") -> bool:
        ok = bool(ok)
        self.scen(scen)["checks"][name] = {"ok": ok, "detail": redact(str(detail))[-3000:]}
        log(f"{scen}: {name}: {'ok' if ok else 'FAILED'} {'' if ok else redact(str(detail))[-400:]}")
        self.save()
        return ok

    def timing(self, name: str, seconds: float) -> None:
        self.data["timings"][name] = round(seconds, 1)
        self.save()

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


# ------------------------------------------------------------------ parsing `ip xfrm`
def parse_states(text: str) -> list[dict]:
    """`ip -s xfrm state` -> [{src, dst, spi, if_id, auth, auth_bits, enc, enc_bits, encap,
    replay_window, packets, bytes}] (keys are measured, not kept)."""
    out = []
    for block in re.split(r"\n(?=src )", text.strip()):
        if not block.startswith("src "):
            continue
        st: dict = {"text": redact(block)}
        m = re.match(r"src (\S+) dst (\S+)", block)
        st["src"], st["dst"] = m.group(1), m.group(2)
        m = re.search(r"proto (\w+) spi (0x[0-9a-f]+)", block)
        st["proto"], st["spi"] = (m.group(1), int(m.group(2), 16)) if m else (None, None)
        # `ip -s` adds "(N bits)" after a key
        m = re.search(r"auth-trunc (\S+) 0x([0-9a-f]+)(?: \(\d+ bits\))? (\d+)", block)
        st["auth"], st["auth_key_bits"], st["auth_trunc"] = (m.group(1), len(m.group(2)) * 4, int(m.group(3))) if m else (None, 0, 0)
        m = re.search(r"\benc (\S+) 0x([0-9a-f]+)", block)
        st["enc"], st["enc_key_bits"] = (m.group(1), len(m.group(2)) * 4) if m else (None, 0)
        m = re.search(r"aead (\S+) 0x([0-9a-f]+)(?: \(\d+ bits\))? (\d+)", block)
        if m:
            st["enc"], st["enc_key_bits"], st["icv_bits"] = m.group(1), len(m.group(2)) * 4, int(m.group(3))
        m = re.search(r"encap type (\S+) sport (\d+) dport (\d+)", block)
        st["encap"] = (m.group(1), int(m.group(2)), int(m.group(3))) if m else None
        m = re.search(r"replay_window (\d+)", block)
        st["replay_window"] = int(m.group(1)) if m else None
        m = re.search(r"if_id (0x[0-9a-f]+)", block)
        st["if_id"] = int(m.group(1), 16) if m else None
        m = re.search(r"reqid (\d+)", block)
        st["reqid"] = int(m.group(1)) if m else None
        m = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", block)
        st["bytes"], st["packets"] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        out.append(st)
    return out


def parse_policies(text: str) -> list[dict]:
    out = []
    for block in re.split(r"\n(?=src )", text.strip()):
        if not block.startswith("src "):
            continue
        m = re.match(r"src (\S+) dst (\S+)", block)
        pol = {"text": block, "src": m.group(1), "dst": m.group(2)}
        m = re.search(r"\bdir (\w+)", block)
        pol["dir"] = m.group(1) if m else None
        m = re.search(r"if_id (0x[0-9a-f]+)", block)
        pol["if_id"] = int(m.group(1), 16) if m else None
        m = re.search(r"tmpl src (\S+) dst (\S+)\s+proto (\w+) reqid (\d+) mode (\w+)", block)
        pol["tmpl"] = (m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(5)) if m else None
        out.append(pol)
    return out


def states(lab) -> list[dict]:
    return parse_states(lab.cgw.ip("-s xfrm state", check=False).stdout)


def policies(lab) -> list[dict]:
    return parse_policies(lab.cgw.ip("xfrm policy", check=False).stdout)


def tag_of(lab, ifname: str) -> int:
    """cgwd's tag of a tunnel: the if_id of its xfrm interface (tags are handed out at
    start, not derived from the name)."""
    m = re.search(r"if_id (0x[0-9a-f]+)", lab.cgw.ip(f"-d -o link show dev {ifname}", check=False).stdout)
    return int(m.group(1), 16) if m else -1


def links(lab) -> list[str]:
    return re.findall(r"^\d+: ([^:@]+)", lab.cgw.ip("-o link show", check=False).stdout, re.M)


def tail(path: str, n: int = 60) -> str:
    try:
        with open(path, errors="replace") as f:
            return redact("".join(f.readlines()[-n:]))
    except OSError as exc:
        return f"({exc})"


def collect_logs(R: Results, scen: str, lab) -> None:
    logs = R.scen(scen)["logs"]
    logs["cgwd.log"] = tail(os.path.join(lab.workdir, "cgwd.log"), 80)
    for t in lab.tunnels:
        logs[f"aws{t.index}/charon.log"] = tail(os.path.join(lab.workdir, f"aws{t.index}", "charon.log"), 40)
        logs[f"aws{t.index}/charon.stdout"] = tail(os.path.join(lab.workdir, f"aws{t.index}", "charon.stdout"), 20)
        if t.charon:
            logs[f"aws{t.index} list-sas"] = redact(t.charon.list_sas())
        logs[f"aws{t.index} xfrm state"] = redact(t.ns.ip("-s xfrm state", check=False).stdout)
    logs["cgw xfrm state"] = redact(lab.cgw.ip("-s xfrm state", check=False).stdout)
    logs["cgw xfrm policy"] = lab.cgw.ip("xfrm policy", check=False).stdout
    logs["cgw links"] = lab.cgw.ip("-d link show", check=False).stdout
    logs["cgw routes"] = lab.cgw.ip("route", check=False).stdout
    R.save()


# ------------------------------------------------------------------ the scenario
def kernel_config(lab) -> str:
    cfg = import_config(lab)
    with open(cfg) as f:
        text = f.read()
    assert 'datapath = "auto"' in text, "cgwctl import aws no longer writes datapath = \"auto\""
    with open(cfg, "w") as f:
        f.write(text.replace('datapath = "auto"', 'datapath = "kernel"'))
    return cfg


def start_and_wait(lab, cfg: str, timeout: float = 600):  # TCG, and a shared machine
    proc = start_cgwd(lab, cfg)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), timeout, interval=1,
             what="cgwd (kernel data path): IPsec installed, BGP established, VPC route in the kernel")
    if proc.poll() is not None:
        raise LabError(f"cgwd exited with status {proc.returncode}")
    return proc


CBC_SHA1 = {"label": "cbc(aes)-128 + hmac(sha1)-96 (AWS default)", "enc": "cbc(aes)", "enc_key_bits": 128,
            "auth": "hmac(sha1)", "auth_key_bits": 160, "auth_trunc": 96,
            "strongswan": "AES_CBC-128/HMAC_SHA1_96/MODP_1024"}
GCM256 = {"label": "rfc4106(gcm(aes))-256 with 128-bit ICV", "enc": "rfc4106(gcm(aes))",
          "enc_key_bits": 288, "icv_bits": 128, "auth": None, "strongswan": "AES_GCM_16-256/MODP_2048"}
# IKEv2: the first Child SA comes with IKE_AUTH, without a key exchange of its own (RFC 7296 1.2)
GCM256_V2 = {**GCM256, "label": "rfc4106(gcm(aes))-256 with 128-bit ICV (IKEv2)", "strongswan": "AES_GCM_16-256"}


def check_tunnels(R: Results, scen: str, lab, nat: bool, algs: dict, *, suffix: str = "") -> dict:
    """The kernel's view of every tunnel cgwd runs; returns {ifname: {"tag", "spis"}}."""
    st = cgwctl_status(lab, as_json=True)
    R.check(scen, "datapath_is_kernel" + suffix, st.get("datapath", {}).get("kind") == "kernel",
            st.get("datapath"))
    all_states = states(lab)
    all_pols = policies(lab)
    per_if = {}
    for i, (t, lt) in enumerate(zip(st["tunnels"], lab.tunnels)):
        ifn = t["ifname"]
        tag = tag_of(lab, ifn)
        key = f"{ifn}{suffix}"
        sa = t["ipsec"]["sas"][-1] if t["ipsec"]["sas"] else {}
        spi_in, spi_out = int(sa.get("spi_in", "0"), 16), int(sa.get("spi_out", "0"), 16)
        mine = [s for s in all_states if s["if_id"] == tag]
        ins = [s for s in mine if s["spi"] == spi_in]
        outs = [s for s in mine if s["spi"] == spi_out]
        ok = len(ins) == 1 and len(outs) == 1
        R.check(scen, f"{key}: xfrm states in and out with if_id 0x{tag:08x}", ok,
                "\n".join(s["text"] for s in all_states) or "(no states)")
        if ok:
            si, so = ins[0], outs[0]
            R.check(scen, f"{key}: outer addresses", (si["src"], si["dst"], so["src"], so["dst"]) ==
                    (lt.aws_outside, lab.cgw_outside, lab.cgw_outside,
                     lt.aws_outside), (si["src"], si["dst"], so["src"], so["dst"]))
            want = {k: v for k, v in algs.items() if k not in ("label", "strongswan")}
            R.check(scen, f"{key}: algorithms {algs['label']}",
                    all(s["proto"] == "esp" and all(s.get(k) == v for k, v in want.items()) for s in (si, so)),
                    si["text"] + "\n" + so["text"])
            R.check(scen, f"{key}: inbound replay window 1024", si["replay_window"] == 1024, si["text"])
            R.check(scen, f"{key}: reqid is cgwd's tag", si["reqid"] == tag and so["reqid"] == tag
                    and cgw_xfrm.is_ours(tag), (si["reqid"], so["reqid"], tag))
            if nat:
                want = ("espinudp", 4500, 4500)
                R.check(scen, f"{key}: UDP encapsulation (espinudp)",
                        si["encap"] and si["encap"][0] == "espinudp" and so["encap"] and so["encap"][0] == "espinudp"
                        and so["encap"][2] == 4500, (si["encap"], so["encap"], want))
            else:
                R.check(scen, f"{key}: plain ESP (no encap)", si["encap"] is None and so["encap"] is None,
                        (si["encap"], so["encap"]))
            # strongSwan's (the peer's) kernel has the mirror image: its outbound SPI is our inbound.
            aws = lt.ns.ip("-s xfrm state", check=False).stdout
            aws_spis = {s["spi"] for s in parse_states(aws)}
            R.check(scen, f"{key}: the AWS side's kernel holds the same SPIs", {spi_in, spi_out} <= aws_spis,
                    f"cgw {spi_in:08x}/{spi_out:08x} aws {[f'{x:08x}' for x in aws_spis]}")
            sas = lt.charon.list_sas()
            line = next((ln for ln in sas.splitlines() if "vti:" in ln and "INSTALLED" in ln), "")
            R.check(scen, f"{key}: strongSwan child INSTALLED {'ESP-in-UDP' if nat else 'plain ESP'} "
                    f"{algs['strongswan']}",
                    line and ("-in-UDP" in line) == nat and algs["strongswan"] in sas, sas)
        pols = [p for p in all_pols if p["if_id"] == tag]
        dirs = sorted(p["dir"] for p in pols)
        tmpl_ok = all(p["tmpl"] and p["tmpl"][2] == "esp" and p["tmpl"][3] == tag and p["tmpl"][4] == "tunnel"
                      and p["src"] == "0.0.0.0/0" and p["dst"] == "0.0.0.0/0" for p in pols)
        out_pol = next((p for p in pols if p["dir"] == "out"), None)
        R.check(scen, f"{key}: policies out/in/fwd 0.0.0.0/0 with if_id and an ESP tunnel template",
                dirs == ["fwd", "in", "out"] and tmpl_ok and out_pol
                and out_pol["tmpl"][:2] == (lab.cgw_outside, lt.aws_outside),
                "\n".join(p["text"] for p in all_pols) or "(no policies)")
        link = lab.cgw.ip(f"-d -o link show dev {ifn}", check=False).stdout
        addr = lab.cgw.ip(f"-o -4 addr show dev {ifn}", check=False).stdout
        R.check(scen, f"{key}: xfrm interface with if_id 0x{tag:x} carries {lt.cgw_inside}/30",
                re.search(rf"xfrm .*if_id 0x{tag:x}\b", link) and f"{lt.cgw_inside}/30" in addr and
                ("state UP" in link or ",UP" in link), link + addr)
        if lab.is_static(lt):
            R.check(scen, f"{key}: static routes up, BGP disabled",
                    t["static"]["state"] == "up" and t["bgp"]["state"] == "disabled", (t["static"], t["bgp"]))
        else:
            bird_ok = lt.bird.established("cgw")
            R.check(scen, f"{key}: BGP established (cgwd and the AWS BIRD)",
                    t["bgp"]["state"] == "established" and bird_ok, (t["bgp"], bird_ok))
        per_if[ifn] = {"tag": tag, "spis": (spi_in, spi_out)}
    # -N: numeric protocol ids, whatever names rt_protos.d gives them
    routes = lab.cgw.ip(f"-N route show {lab.spec.vpc_cidr}", check=False).stdout
    R.check(scen, "VPC route in the kernel through an xfrm interface" + suffix,
            re.search(r"10\.100\.0\.0/16 via 169\.254\.\d+\.1 dev cgw-\S+ proto 157", routes), routes)
    return per_if


MSS_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((HOST, 5599))
s.listen(1)
s.settimeout(120)
c, _ = s.accept()
print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
"""
MSS_CLIENT = """
import socket, time
deadline = time.monotonic() + 90
while True:
    try:
        c = socket.create_connection((HOST, 5599), timeout=10)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
"""


def mss_rules(lab) -> list[str]:
    out = lab.cgw.run(["iptables-save", "-t", "mangle"], check=False).stdout
    return [ln for ln in out.splitlines() if "cgwd-mss" in ln]


def tcp_mss(lab) -> tuple[int, int, str]:
    """(server MSS, client MSS) of one TCP connection on-prem -> VPC host through the tunnel."""
    host = f"HOST = {lab.spec.vpc_host!r}\n"
    srv = subprocess.Popen(lab.vpc.cmd([sys.executable, "-c", host + MSS_SERVER]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        cli = lab.onprem.run([sys.executable, "-c", host + MSS_CLIENT], check=False, timeout=150)
        sout, _ = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    try:
        return int(sout.split()[-1]), int(cli.stdout.split()[-1]), sout + cli.stdout + cli.stderr
    except (ValueError, IndexError):
        return 0, 0, sout + cli.stdout + cli.stderr


def ping_loss(lab, count: int, interval: float = 0.2) -> tuple[int, int, str]:
    proc = lab.onprem.run(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2",
                           lab.spec.vpc_host], check=False, timeout=count * (interval + 2) + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    return (int(m.group(1)), int(m.group(2)), proc.stdout) if m else (count, 0, proc.stdout + proc.stderr)


def cleanup_checks(R: Results, scen: str, lab, what: str) -> None:
    R.check(scen, f"{what}: no XFRM states left in the cgw namespace", not states(lab),
            lab.cgw.ip("xfrm state", check=False).stdout)
    R.check(scen, f"{what}: no XFRM policies left in the cgw namespace", not policies(lab),
            lab.cgw.ip("xfrm policy", check=False).stdout)
    R.check(scen, f"{what}: no cgw-* interfaces left", not [n for n in links(lab) if n.startswith("cgw-")],
            links(lab))
    R.check(scen, f"{what}: no TCP MSS rules left", not mss_rules(lab), mss_rules(lab))
    R.check(scen, f"{what}: no routes with cgwd's protocol (157) left",
            not lab.cgw.ip("route show proto 157", check=False).stdout.strip(),
            lab.cgw.ip("route show proto 157", check=False).stdout)


def scenario(R: Results, scen: str, *, nat: bool, tunnels: int, prefix: str, full: bool, algs: dict,
             ike: int = 1) -> None:
    aws = []
    if algs is GCM256 or algs is GCM256_V2:
        aws = [AwsTunnelSpec(ike_proposals="aes256-sha256-modp2048", esp_proposals="aes256gcm16-modp2048")
               for _ in range(tunnels)]
    spec = LabSpec(prefix=prefix, tunnels=tunnels, nat=nat, aws=aws, aws_kernel_ipsec=True, aws_encap=False,
                   ike_version=ike)
    lab = Lab(spec)
    t0 = time.monotonic()
    try:
        lab.up()
        R.timing(f"{scen}: lab up", time.monotonic() - t0)
        cfg = kernel_config(lab)
        t1 = time.monotonic()
        proc = start_and_wait(lab, cfg)
        R.timing(f"{scen}: cgwd ready (IKE + ESP + BGP + route)", time.monotonic() - t1)
        R.check(scen, "cgwd up with the kernel data path", True)
        per_if = check_tunnels(R, scen, lab, nat, algs)
        lab.wait_ping(60)
        sent, got, out = ping_loss(lab, 10)
        R.check(scen, "ping on-prem -> VPC through the kernel ESP path", got == sent, out)
        counted = [s for s in states(lab) if s["if_id"] in {v["tag"] for v in per_if.values()}]
        R.check(scen, "kernel XFRM counters moved in both directions",
                any(s["packets"] > 0 and s["dst"] == lab.cgw_outside for s in counted)
                and any(s["packets"] > 0 and s["src"] == lab.cgw_outside for s in counted),
                "\n".join(s["text"] for s in counted))
        st = cgwctl_status(lab, as_json=True)
        R.check(scen, "cgwctl status reports the kernel's packet counters",
                sum(t["ipsec"]["packets_in"] for t in st["tunnels"]) > 0
                and sum(t["ipsec"]["packets_out"] for t in st["tunnels"]) > 0,
                [(t["name"], t["ipsec"]["packets_in"], t["ipsec"]["packets_out"]) for t in st["tunnels"]])
        if full:
            rules = mss_rules(lab)
            R.check(scen, "TCP MSS clamp: two TCPMSS rules per tunnel (--set-mss 1379)",
                    len(rules) == 2 * tunnels and all("--set-mss 1379" in r for r in rules), rules)
            smss, cmss, text = tcp_mss(lab)
            R.check(scen, "TCP MSS clamp: a TCP connection on-prem -> VPC gets MSS <= 1379 on both ends",
                    0 < smss <= 1379 and 0 < cmss <= 1379, text)
            R.data["figures"][f"{scen}: TCP MSS server/client"] = f"{smss}/{cmss}"
            rekey(R, scen, lab, st, "cgwd")
            rekey(R, scen, lab, st, "aws")
            # SIGKILL leaves the kernel state behind; the next start must clear it.
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            left = [s for s in states(lab) if s["if_id"] in {v["tag"] for v in per_if.values()}]
            R.check(scen, "after SIGKILL the kernel still holds cgwd's states (test precondition)", left,
                    len(left))
            t2 = time.monotonic()
            proc = start_and_wait(lab, cfg)
            R.timing(f"{scen}: cgwd restart over stale state", time.monotonic() - t2)
            per_if2 = check_tunnels(R, scen, lab, nat, algs, suffix=" (after restart)")
            mine = [s for s in states(lab) if s["if_id"] in {v["tag"] for v in per_if2.values()}]
            R.check(scen, "restart removed the stale states: exactly one pair per tunnel",
                    len(mine) == 2 * tunnels, "\n".join(s["text"] for s in mine))
            lab.wait_ping(60)
            sent, got, out = ping_loss(lab, 5)
            R.check(scen, "ping after restart", got == sent, out)
            rules = mss_rules(lab)
            R.check(scen, "TCP MSS clamp after restart: still exactly two rules per tunnel",
                    len(rules) == 2 * tunnels, rules)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        R.check(scen, "SIGTERM: cgwd exits with status 0", proc.returncode == 0, proc.returncode)
        cleanup_checks(R, scen, lab, "SIGTERM")
        logtext = open(os.path.join(lab.workdir, "cgwd.log"), errors="replace").read()
        R.check(scen, "no traceback in cgwd's log", "Traceback" not in logtext, tail(os.path.join(lab.workdir, "cgwd.log")))
        secrets = [t.psk for t in lab.tunnels]
        R.check(scen, "no PSK in cgwd's log", not any(p in logtext for p in secrets), "a PSK was logged")
    except Exception as exc:  # noqa: BLE001 - recorded for the host test, with logs
        R.scen(scen)["error"] = redact("".join(traceback.format_exception(exc)))[-4000:]
        log(f"{scen}: ERROR {exc}")
    finally:
        try:
            collect_logs(R, scen, lab)
        except Exception as exc:  # noqa: BLE001
            R.scen(scen)["logs"]["collect"] = repr(exc)
        lab.down()
        R.check(scen, "lab torn down (no namespaces, processes, directories left)", not leftovers(prefix),
                leftovers(prefix))
        R.timing(f"{scen}: total", time.monotonic() - t0)


def static_scenario(R: Results, scen: str, prefix: str) -> None:
    """A static VPN connection on the kernel data path: the static route through tunnel 1's
    xfrm interface, AWS's answers arriving on tunnel 2 (asymmetric), failover to tunnel 2 when
    tunnel 1's endpoint vanishes (DPD 2 s x 3), SIGTERM cleanup."""
    spec = LabSpec(prefix=prefix, tunnels=2, static=True, aws_kernel_ipsec=True, aws_encap=False)
    lab = Lab(spec)
    t0 = time.monotonic()
    try:
        lab.up()
        R.timing(f"{scen}: lab up", time.monotonic() - t0)
        cfg = kernel_config(lab)
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(re.sub(r"dpd_interval = \d+", "dpd_interval = 2", text))
        t1 = time.monotonic()
        proc = start_and_wait(lab, cfg)
        R.timing(f"{scen}: cgwd ready (IKE + ESP + static route)", time.monotonic() - t1)
        R.check(scen, "cgwd up with the kernel data path", True)
        check_tunnels(R, scen, lab, False, CBC_SHA1)
        lt1, lt2 = lab.tunnels
        wait_for(lambda: lab.aws_return_via == "aws2", 60, what="AWS's side to route on-prem via tunnel 2")
        lab.wait_ping(60)
        sent, got, out = ping_loss(lab, 10)
        R.check(scen, "ping on-prem -> VPC through tunnel 1's kernel ESP, answered on tunnel 2", got == sent, out)
        back = lab.vpc.run(["ping", "-n", "-q", "-c", "5", "-i", "0.2", "-W", "2", "-I", spec.vpc_host,
                            spec.onprem_host], check=False, timeout=60)
        R.check(scen, "ping VPC -> on-prem (AWS sends on tunnel 2)", " 0% packet loss" in back.stdout, back.stdout)
        mine = states(lab)
        out1 = [s for s in mine if s["src"] == lab.cgw_outside and s["dst"] == lt1.aws_outside]
        in2 = [s for s in mine if s["src"] == lt2.aws_outside and s["dst"] == lab.cgw_outside]
        R.check(scen, "kernel XFRM counters: out on tunnel 1, in on tunnel 2 (asymmetric return accepted)",
                any(s["packets"] > 0 for s in out1) and any(s["packets"] > 0 for s in in2),
                "\n".join(s["text"] for s in mine))
        ifs = {t["name"]: t["ifname"] for t in cgwctl_status(lab, as_json=True)["tunnels"]}
        if2 = list(ifs.values())[1]
        for args in (["-d", lt1.aws_outside], ["-s", lt1.aws_outside]):
            lab.wan.run(["iptables", "-I", "FORWARD", *args, "-j", "DROP"])
        t2 = time.monotonic()

        def moved():
            return re.search(rf"via {re.escape(lt2.aws_inside)} dev {re.escape(if2)} ",
                             lab.cgw.ip(f"route show {spec.vpc_cidr}", check=False).stdout)
        try:
            wait_for(moved, 120, interval=0.5, what="the static route to move to tunnel 2")
            R.timing(f"{scen}: failover (DPD 2 s x 3) to the route on tunnel 2", time.monotonic() - t2)
            R.check(scen, "static failover: the VPC route moved to tunnel 2's xfrm interface", True)
        except LabError as exc:
            R.check(scen, "static failover: the VPC route moved to tunnel 2's xfrm interface", False,
                    f"{exc}\n" + lab.cgw.ip("route", check=False).stdout)
        st = cgwctl_status(lab, as_json=True)
        R.check(scen, "static failover: tunnel 1 down (DPD), tunnel 2 carries the route",
                st["tunnels"][0]["static"]["state"] == "down" and st["vpns"][0]["static"][0]["tunnels"]
                == [st["tunnels"][1]["name"]], (st["tunnels"][0]["static"], st["vpns"][0].get("static")))
        lab.wait_ping(60)
        sent, got, out = ping_loss(lab, 5)
        R.check(scen, "static failover: ping over tunnel 2", got == sent, out)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        R.check(scen, "SIGTERM: cgwd exits with status 0", proc.returncode == 0, proc.returncode)
        cleanup_checks(R, scen, lab, "SIGTERM")
        logtext = open(os.path.join(lab.workdir, "cgwd.log"), errors="replace").read()
        R.check(scen, "no traceback in cgwd's log", "Traceback" not in logtext, tail(os.path.join(lab.workdir, "cgwd.log")))
        R.check(scen, "no PSK in cgwd's log", not any(t.psk in logtext for t in lab.tunnels), "a PSK was logged")
    except Exception as exc:  # noqa: BLE001 - recorded for the host test, with logs
        R.scen(scen)["error"] = redact("".join(traceback.format_exception(exc)))[-4000:]
        log(f"{scen}: ERROR {exc}")
    finally:
        try:
            collect_logs(R, scen, lab)
        except Exception as exc:  # noqa: BLE001
            R.scen(scen)["logs"]["collect"] = repr(exc)
        lab.down()
        R.check(scen, "lab torn down (no namespaces, processes, directories left)", not leftovers(prefix),
                leftovers(prefix))
        R.timing(f"{scen}: total", time.monotonic() - t0)


def rekey(R: Results, scen: str, lab, st: dict, by: str) -> None:
    """A phase-2 rekey of the tunnel that carries the traffic, started by cgwd (`cgwctl rekey`)
    or by the AWS side (strongSwan initiates quick mode): the new pair is in the kernel before
    the old one goes, so a ping running across it loses nothing."""
    routes = lab.cgw.ip(f"route show {lab.spec.vpc_cidr}", check=False).stdout
    m = re.search(r"dev (cgw-\S+)", routes)
    i = next((k for k, t in enumerate(st["tunnels"]) if m and t["ifname"] == m.group(1)), 0)
    t, lt = st["tunnels"][i], lab.tunnels[i]
    tag = tag_of(lab, t["ifname"])
    old = {s["spi"] for s in states(lab) if s["if_id"] == tag}
    label = f"rekey by {by}"
    log_path = os.path.join(lab.workdir, f"rekey-{by}-ping.log")
    pinger = lab.onprem.popen(["ping", "-n", "-q", "-c", "60", "-i", "0.25", "-W", "2", lab.spec.vpc_host],
                              log_path=log_path)
    time.sleep(2)
    t0 = time.monotonic()
    if by == "cgwd":
        sock = os.path.join(lab.workdir, "cgwd.sock")
        out = run(cgwctl_command("rekey", t["name"], "--socket", sock), check=False, timeout=30)
        R.check(scen, f"{label}: cgwctl rekey accepted", out.returncode == 0, out.stdout + out.stderr)
    else:
        out = lt.charon.swanctl("--rekey", "--child", "vti", check=False)
        R.check(scen, f"{label}: swanctl --rekey accepted", "failed" not in out.lower(), out)

    def new_pair():
        fresh = [s for s in states(lab) if s["if_id"] == tag and s["spi"] not in old]
        return len(fresh) >= 2

    try:
        wait_for(new_pair, 90, interval=0.5, what=f"a new SA pair in the kernel after the {label}")
        R.check(scen, f"{label}: a new SA pair installed", True)
        R.timing(f"{scen}: {label} to new pair in kernel", time.monotonic() - t0)
    except LabError as exc:
        R.check(scen, f"{label}: a new SA pair installed", False,
                f"{exc}\n" + lab.cgw.ip("xfrm state", check=False).stdout)
    try:
        wait_for(lambda: not any(s["spi"] in old for s in states(lab)), 90, interval=1,
                 what="the old SA pair to be deleted")
        mine = [s for s in states(lab) if s["if_id"] == tag]
        R.check(scen, f"{label}: old pair deleted, one pair left", len(mine) == 2,
                "\n".join(s["text"] for s in mine))
    except LabError as exc:
        R.check(scen, f"{label}: old pair deleted, one pair left", False,
                f"{exc}\n" + lab.cgw.ip("xfrm state", check=False).stdout)
    try:
        pinger.wait(90)
    except subprocess.TimeoutExpired:
        pinger.kill()
    text = open(log_path, errors="replace").read()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    R.data["figures"][f"{scen}: ping during {label} (sent/received)"] = f"{sent}/{got}"
    R.check(scen, f"{label}: make-before-break, pings across the rekey (at most 1 lost)",
            sent > 0 and sent - got <= 1, text)
    sent, got, out = ping_loss(lab, 5)
    R.check(scen, f"{label}: ping afterwards", got == sent, out)


def probe(R: Results) -> None:
    """Capability detection in a kernel that has ESP: "auto" must pick the kernel data path,
    and the probe must leave nothing behind."""
    from cgwd.esp.datapath import choose_datapath

    scen = "probe"
    before = run(["ip", "-o", "link", "show"], check=False).stdout
    kind, why = choose_datapath("auto")
    R.check(scen, "probe: auto picks the kernel data path", kind == "kernel", why)
    R.check(scen, "probe: the reason names ESP and xfrm interfaces",
            "ESP" in why and "xfrm interfaces work" in why, why)
    after = run(["ip", "-o", "link", "show"], check=False).stdout
    st = run(["ip", "xfrm", "state"], check=False).stdout
    R.check(scen, "probe: leaves no interface and no XFRM state behind",
            "cgwprb" not in after and len(after.splitlines()) == len(before.splitlines()) and not st.strip(),
            redact(after + st))


def load_modules(R: Results) -> None:
    for m in MODULES:
        p = subprocess.run(["modprobe", m], capture_output=True, text=True)
        R.data["modules"][m] = "ok" if p.returncode == 0 else p.stderr.strip()[-200:]
    R.save()


WARM = ("/usr/lib/ipsec", "/usr/sbin/bird", "/usr/sbin/birdc", "/usr/sbin/swanctl")


def warm_page_cache(R: Results) -> None:
    """Read strongSwan's and BIRD's files once before the first lab: under TCG the first
    charon start faults its 40-odd plugins in over the host filesystem (in CI it once missed
    an 80 s deadline for its vici socket, the later starts took seconds)."""
    t0 = time.monotonic()
    size = 0
    for top in WARM:
        paths = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
        for path in paths:
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        size += len(chunk)
            except OSError:
                continue
    R.timing("page cache warmed", time.monotonic() - t0)
    log(f"read {size >> 20} MiB of strongSwan and BIRD in {time.monotonic() - t0:.1f}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios", default="direct,nat")
    ap.add_argument("--prefix", default="qx")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    R = Results(os.path.join(args.out, "results.json"))
    R.data["kernel"] = os.uname().release
    log(f"kernel {os.uname().release}, {os.cpu_count()} CPUs")
    load_modules(R)
    slow_lab_waits()
    warm_page_cache(R)
    missing = [m for m in ESSENTIAL if R.data["modules"][m] != "ok"]
    if missing:
        R.data["fatal"] = f"cannot load {missing}: {[R.data['modules'][m] for m in missing]}"
        R.save()
        return 1
    for i, name in enumerate(args.scenarios.split(",")):
        name = name.strip()
        if name == "probe":
            try:
                probe(R)
            except Exception as exc:  # noqa: BLE001
                R.scen("probe")["error"] = redact("".join(traceback.format_exception(exc)))[-4000:]
        elif name == "direct":
            scenario(R, "direct", nat=False, tunnels=2, prefix=f"{args.prefix}d", full=True, algs=CBC_SHA1)
        elif name == "nat":
            # behind NAT with AES-GCM-256 / DH 14 over IKEv2 (what AWS recommends): ESP-in-UDP
            # and an AEAD state from an IKEv2 Child SA (direct is IKEv1)
            scenario(R, "nat", nat=True, tunnels=1, prefix=f"{args.prefix}n", full=False, algs=GCM256_V2, ike=2)
        elif name == "static":
            static_scenario(R, "static", prefix=f"{args.prefix}s")
        else:
            R.data.setdefault("unknown", []).append(name)
    R.data["done"] = True
    R.timing("guest script total", time.monotonic() - T0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
