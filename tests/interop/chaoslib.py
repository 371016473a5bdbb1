"""What the soak and chaos tests check again and again: every SA accounted for at both ends,
cgwd's view against strongSwan's and BIRD's, and what the process and the kernel hold.

Everything is read from outside cgwd (its control socket and /proc, `swanctl --list-sas`,
`birdc`, `ip` in the customer namespace), so that a check cannot share a bug with what it
checks.
"""

from __future__ import annotations

import datetime
import re
import time

from faultlab import proc_stats, status

from cgwd.lab.strongswan import list_sas_parsed


# ----------------------------------------------------------------------------- SAs at both ends

def aws_view(t) -> list[dict]:
    """strongSwan's IKE SAs of tunnel ``t`` (parsed `swanctl --list-sas`)."""
    if t.charon is None or t.charon.proc is None or t.charon.proc.poll() is not None:
        return []
    return list_sas_parsed(t.charon.list_sas())


def aws_retained(view: list[dict], tun: dict) -> list[dict]:
    """IKEv1 SAs strongSwan re-authenticated itself and keeps in REKEYING until they expire
    (its IKEv1 reauth moves the CHILD_SAs to the new SA and leaves the old one to its
    lifetime; as the responder of a reauth, strongSwan drops the old one at once): not
    orphans of cgwd, counted apart."""
    if tun["ike"].get("version") != 1:
        return []
    return [sa for sa in view if sa["state"] == "REKEYING" and not sa["children"]
            and sa.get("spi_i") != (tun["ike"].get("spi") or {}).get("initiator")]


def aws_half_open(view: list[dict], tun: dict) -> list[dict]:
    """IKE SAs AWS initiated itself and never got a reply to (CONNECTING, responder SPI 0),
    other than cgwd's current one."""
    spi = (tun["ike"].get("spi") or {}).get("initiator")
    return [sa for sa in view if sa["state"] == "CONNECTING" and int(sa.get("spi_r") or "0", 16) == 0
            and sa.get("spi_i") != spi]


NAT_INPUT_MARK = "cgwd-chaos-aws-to-nat"


def count_nat_input(lab) -> None:
    """Count, on the customer's NAT router, the IKE datagrams an AWS endpoint sends to the
    router's own address with no mapping behind it (in the INPUT chain: conntrack sent them to
    no inside host). strongSwan sends its own initiations to the NAT's public address at port
    500 (resolve_hosts: the peer's address with the configured port): the lab's NAT does not
    forward that port, nor does a real one, so they never reach cgwd."""
    if lab.nat is None:
        return
    for t in lab.tunnels:
        lab.nat.run(["iptables", "-w", "-A", "INPUT", "-i", "wan0", "-s", t.aws_outside, "-p", "udp", "-m",
                     "multiport", "--dports", "500,4500", "-m", "comment", "--comment", f"{NAT_INPUT_MARK}-{t.index}"])


def nat_input(lab) -> dict[int, int]:
    """Per tunnel index: IKE datagrams from its AWS endpoint the NAT router kept (count_nat_input)."""
    if lab.nat is None:
        return {}
    out = lab.nat.run(["iptables", "-w", "-L", "INPUT", "-v", "-x", "-n"], check=False).stdout
    return {int(m.group(2)): int(m.group(1))
            for m in re.finditer(rf"^\s*(\d+)\s+\d+.*/\* {NAT_INPUT_MARK}-(\d+) \*/", out, flags=re.M)}


class Undeliverable:
    """AWS initiations that could not reach cgwd behind its NAT, told apart precisely.

    strongSwan starts a main mode of its own when cgwd deletes the ISAKMP SA while a quick
    mode of charon's is in flight (isakmp_delete -> ike_sa reestablish: "tasks that recreate
    children"; the lab's charon rekeys a pair of its own whenever the NAT moves cgwd's port,
    libipsec cannot update the SA in place). That main mode goes to the NAT's port 500 and is
    never answered: AWS then holds an IKE SA in CONNECTING with responder SPI 0 (and, with
    keyingtries = 0, retries it for good). Such an SA is forgiven only once the NAT router has
    demonstrably kept a datagram of that endpoint after the SA was first seen (its
    retransmission landed on the router itself, nat_input) and cgwd holds no IKE SA of its
    initiator SPI; one that reached cgwd is cgwd's to answer and never forgiven."""

    def __init__(self, lab):
        self.lab = lab
        self.first: dict[tuple[int, str], int] = {}  # (tunnel index, AWS's SPI) -> NAT's count when first seen
        self.forgiven: set[tuple[int, str]] = set()

    def spis(self, st: dict) -> set[tuple[int, str]]:
        """The (tunnel index, AWS initiator SPI) of the half-open AWS SAs forgiven at this look."""
        counts = nat_input(self.lab)
        out = set()
        for i, lt in enumerate(self.lab.tunnels):
            tun = st["tunnels"][i] if i < len(st.get("tunnels", [])) else None
            if tun is None or tun["ike"].get("version") != 1:
                continue
            for sa in aws_half_open(aws_view(lt), tun):
                key = (lt.index, sa.get("spi_i"))
                first = self.first.setdefault(key, counts.get(lt.index, 0))
                if counts.get(lt.index, 0) > first:
                    out.add(key)
        self.forgiven |= out
        return out


def sa_problems(lab, st: dict, forgiven: set = frozenset(), undeliverable: set = frozenset()) -> list[str]:
    """Where cgwd's SAs and strongSwan's differ, in words (empty: every SA accounted for).

    Per tunnel: the IPsec/Child SA pairs cgwd holds are exactly those charon holds (cgwd's
    (in, out) is charon's (out, in)), in any state: an SA one side still keeps and the other
    forgot is an orphan. IKE: charon holds one IKE SA, cgwd's current one (same SPIs), besides
    the IKEv1 SAs it re-authenticated and keeps by design (aws_retained). ``forgiven``: cgwd's
    (in, out) pairs AWS may still hold (see lost_deletes). ``undeliverable``: (tunnel index,
    SPI) of AWS's own initiations that demonstrably never reached cgwd (Undeliverable)."""
    out = []
    by_name = {t["name"]: t for t in st.get("tunnels", [])}
    for i, lt in enumerate(lab.tunnels):
        tun = st["tunnels"][i] if i < len(st.get("tunnels", [])) else None
        if tun is None:
            out.append(f"tunnel {i + 1}: not in cgwd's status ({sorted(by_name)})")
            continue
        name = tun["name"]
        ours = {(s["spi_in"], s["spi_out"]) for s in tun["ipsec"]["sas"]}
        view = aws_view(lt)
        theirs = {(c.get("spi_out"), c.get("spi_in")) for sa in view for c in sa["children"]}
        if ours - theirs:
            out.append(f"{name}: cgwd holds pairs AWS does not: {sorted(ours - theirs)}")
        if theirs - ours - forgiven:
            out.append(f"{name}: AWS holds pairs cgwd does not: {sorted(theirs - ours - forgiven)}")
        spi = tun["ike"].get("spi") or {}
        retained = aws_retained(view, tun)
        ikes = [(sa.get("spi_i"), sa.get("spi_r"), sa["state"]) for sa in view
                if sa not in retained and (lt.index, sa.get("spi_i")) not in undeliverable]
        if tun["ike"]["state"] == "established":
            if len(ikes) != 1 or ikes[0][:2] != (spi.get("initiator"), spi.get("responder")):
                out.append(f"{name}: cgwd's IKE SA {spi.get('initiator')}/{spi.get('responder')}, AWS holds {ikes}")
        elif ikes:
            out.append(f"{name}: cgwd has no IKE SA ({tun['ike']['state']}), AWS holds {ikes}")
    return out


def lost_deletes(log: str) -> set[tuple[str, str]]:
    """The (in, out) pairs cgwd removed after a rekey or at expiry, sending its DELETE: with
    IKEv1 that informational is sent once and never acknowledged (RFC 2408 4.8), so under WAN
    loss the peer may keep the pair until its own lifetime ends: an orphan at AWS that cgwd
    cannot know of. (The soak, without loss, accepts none.)"""
    return set(re.findall(r"IPsec SA down: esp spi_in=0x([0-9a-f]{8}) spi_out=0x([0-9a-f]{8}) .*\((?:rekeyed|expired)\)",
                          log))


def settle_sas(lab, timeout: float = 25.0) -> tuple[float, list[str], dict]:
    """Poll until every SA is accounted for (rekeys in flight settle within seconds): returns
    (seconds it took, the problems of the last look, its status). An SA orphaned for good
    shows as problems after ``timeout``."""
    t0 = time.monotonic()
    while True:
        st = status(lab)
        problems = sa_problems(lab, st) if st else ["cgwd did not answer status"]
        if not problems or time.monotonic() - t0 > timeout:
            return time.monotonic() - t0, problems, st
        time.sleep(0.5)


# ----------------------------------------------------------------------------- BGP's view

def bgp_problems(lab, st: dict) -> list[str]:
    """cgwd's BGP state and routes against the AWS endpoints' BIRD."""
    out = []
    for i, lt in enumerate(lab.tunnels):
        if lt.bird is None:
            continue
        tun = st["tunnels"][i]
        theirs = lt.bird.established("cgw")
        ours = tun["bgp"]["state"] == "established"
        if ours != theirs:
            out.append(f"{tun['name']}: cgwd BGP {tun['bgp']['state']}, BIRD {lt.bird.protocol_state('cgw')}")
        if ours and theirs:
            learned = {r["prefix"] for r in st.get("routes", []) if r["tunnel"] == tun["name"]}
            if lab.spec.vpc_cidr not in learned:
                out.append(f"{tun['name']}: BIRD announces {lab.spec.vpc_cidr}, cgwd learned {sorted(learned)}")
    return out


# ----------------------------------------------------------------------------- resources

def _count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text, flags=re.M))


def kernel_state(lab) -> dict:
    """What the customer namespace's kernel holds: interfaces, routes (cgwd's: protocol 157),
    xfrm states and policies (none on the userspace data path), MSS clamp rules."""
    ns = lab.cgw
    routes = ns.ip("route show table all", check=False).stdout
    return {
        "links": _count(ns.ip("-o link show", check=False).stdout, r"^\d+:"),
        "routes": _count(routes, r"^\S"),
        "routes157": _count(ns.ip("route show table all proto 157", check=False).stdout, r"^\S"),
        "xfrm": _count(ns.ip("xfrm state", check=False).stdout, r"^src ")
        + _count(ns.ip("xfrm policy", check=False).stdout, r"^src "),
    }


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def sample(lab, pid: int, st: dict) -> dict:
    """One row of the soak table: cgwd's process, the kernel, cgwd's routes and SAs."""
    p = proc_stats(pid)
    return {"rss": p["rss"], "fds": p["fds"], "tasks": st["process"]["asyncio_tasks"], "threads": threads(pid),
            **kernel_state(lab), "rib": len(st.get("routes", [])),
            "sas": sum(len(t["ipsec"]["sas"]) for t in st["tunnels"]),
            "aws_sas": sum(len(sa["children"]) for t in lab.tunnels for sa in aws_view(t)),
            "aws_kept": sum(len(aws_retained(aws_view(lt), t)) for lt, t in zip(lab.tunnels, st["tunnels"]))}


COLUMNS = [("t", "t s", 6, 0), ("rss", "RSS MiB", 8, 1), ("fds", "fds", 4, 0), ("tasks", "tasks", 5, 0),
           ("threads", "threads", 7, 0), ("links", "links", 5, 0), ("routes", "routes", 6, 0),
           ("routes157", "proto157", 8, 0), ("xfrm", "xfrm", 4, 0), ("rib", "rib", 3, 0), ("sas", "SAs", 3, 0),
           ("aws_sas", "AWS SAs", 7, 0), ("aws_kept", "AWS kept", 8, 0), ("ph2", "ph2", 4, 0), ("ph1", "ph1", 4, 0), ("settle", "settle s", 8, 1)]


def log_around(paths: list[str], wall_times: list[float], margin: float = 4.0, limit: int = 60) -> str:
    """The lines of cgwd's and charon's logs (both stamped to the millisecond) written within
    ``margin`` seconds of any of ``wall_times``: what the data path and IKE did around a loss."""
    out = []
    for path in paths:
        try:
            lines = open(path, errors="replace").read().splitlines()
        except OSError:
            continue
        picked = []
        for ln in lines:
            m = re.match(r"(?:(\d{4}-\d\d-\d\d) )?(\d\d):(\d\d):(\d\d)\.(\d{3})", ln)
            if not m:
                continue
            day = datetime.date.fromisoformat(m.group(1)) if m.group(1) else None
            for w in wall_times:
                ref = datetime.datetime.fromtimestamp(w)
                d = day or ref.date()
                at = datetime.datetime(d.year, d.month, d.day, int(m.group(2)), int(m.group(3)),
                                       int(m.group(4)), int(m.group(5)) * 1000).timestamp()
                if abs(at - w) <= margin:
                    picked.append(ln)
                    break
        out.append(f"----- {path} around {[datetime.datetime.fromtimestamp(w).strftime('%H:%M:%S.%f')[:-3] for w in wall_times]}")
        out.extend(picked[:limit])
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    """The rows as a fixed-width table (RSS in MiB)."""
    lines = [" ".join(f"{title:>{w}}" for _k, title, w, _d in COLUMNS)]
    for r in rows:
        cells = []
        for key, _title, w, dec in COLUMNS:
            v = r.get(key)
            if key == "rss" and v is not None:
                v = v / (1 << 20)
            cells.append(f"{v:>{w}.{dec}f}" if isinstance(v, (int, float)) else f"{'-' if v is None else v:>{w}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- chaos: invariants

def aws_med(t, prefix: str) -> int | None | str:
    """The MED AWS's BIRD of tunnel ``t`` holds on the route to ``prefix`` learned from cgwd
    (None: no MED attribute; "absent": no such route)."""
    out = t.bird.birdc("show", "route", prefix, "protocol", "cgw", "all")
    if not re.search(rf"^{re.escape(prefix)}\s", out, flags=re.M):
        return "absent"
    m = re.search(r"BGP\.med:\s*(\d+)", out)
    return int(m.group(1)) if m else None


def route_devices(lab) -> set[str]:
    """The interfaces the customer namespace's kernel routes the VPC prefix through (cgwd's
    fail-closed ``unreachable`` route left out; a multipath route gives each next hop's)."""
    return set(re.findall(r"\bdev (\S+)", lab.cgw_routes()))


class DeadTunnelWatch:
    """From outside cgwd, about every ``every`` seconds: which tunnels are dead (their AWS
    endpoint's charon is not running, the path to it is cut (``cut`` holds the tunnel
    indexes the test has silenced), AWS's endpoint holds no installed CHILD_SA whose
    inbound SPI is cgwd's outbound SPI, or its BGP speaker was killed (``bgp_dead``)), and
    whether the kernel still routes the VPC into one. A tunnel that is dead while a route
    points into it for longer than its detection time (DPD interval x (retries + 1), or the
    BGP hold time when only BGP died, from cgwd's status, + ``slack``) is a violation.

    The time a tunnel counts as dead from is the last look that saw it alive (or the time
    :meth:`mark` gave for a fault known to kill it), so a sampling gap never shortens it."""

    def __init__(self, lab, client, *, slack: float = 5.0, every: float = 0.5):
        import threading
        self.lab, self.client, self.slack, self.every = lab, client, slack, every
        self.cut: set[int] = set()
        self.bgp_dead: set[int] = set()  # tunnels whose AWS BGP speaker the test killed (no NOTIFICATION)
        self.violations: list[str] = []
        self.longest: dict[int, float] = {}  # tunnel index: longest dead-with-route seconds seen
        self.looks = 0
        self._alive_at: dict[int, float] = {}
        self._marked: dict[int, float] = {}
        self._ifnames: dict[int, str] = {}
        self._dpd: dict[int, tuple[int, int]] = {}
        self._hold: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dead-tunnel-watch", daemon=True)
        self._thread.start()

    def mark(self, index: int, at: float) -> None:
        """Tunnel ``index`` died at monotonic time ``at`` (a fault the test inflicted)."""
        with self._lock:
            self._marked[index] = at

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _alive(self, lt, tun: dict | None) -> bool:
        if lt.index in self.cut or lt.index in self.bgp_dead:
            return False
        if lt.charon is None or lt.charon.proc is None or lt.charon.proc.poll() is not None:
            return False
        if tun is None:
            return True  # cgwd not answering: its TUNs (and their routes) go with it
        outs = {s["spi_out"] for s in tun["ipsec"]["sas"]}
        theirs = {c.get("spi_in") for sa in list_sas_parsed(lt.charon.list_sas()) for c in sa["children"]
                  if c["state"] == "INSTALLED"}
        return bool(outs & theirs)

    def look(self) -> None:
        try:
            st = self.client.request({"cmd": "status"}, timeout=5)["status"]
        except Exception:
            st = None
        tuns = (st or {}).get("tunnels") or []
        now = time.monotonic()
        for i, lt in enumerate(self.lab.tunnels):
            tun = tuns[i] if i < len(tuns) else None
            if tun is not None:
                self._ifnames[lt.index] = tun["ifname"]
                self._dpd[lt.index] = (tun["dpd"]["interval"], tun["dpd"]["retries"])
                self._hold[lt.index] = tun["bgp"].get("hold_time") or 30
            try:
                alive = self._alive(lt, tun)
            except Exception:
                continue  # charon restarting (no vici yet): no judgement from this look
            with self._lock:
                marked = self._marked.pop(lt.index, None)
                if marked is not None:
                    self._alive_at[lt.index] = min(self._alive_at.get(lt.index, now), marked)
                if alive:
                    self._alive_at[lt.index] = now
                    continue
            devs = route_devices(self.lab)
            if self._ifnames.get(lt.index) not in devs:
                self._alive_at[lt.index] = now  # dead, but no route into it: nothing is black-holed
                continue
            dead_for = now - self._alive_at.get(lt.index, now)
            interval, retries = self._dpd.get(lt.index, (10, 3))
            budget, how = interval * (retries + 1), f"DPD {interval}x({retries}+1)"
            if lt.index in self.bgp_dead and lt.index not in self.cut:  # its IPsec still works: BGP's hold time
                budget, how = self._hold.get(lt.index, 30), f"BGP hold time {self._hold.get(lt.index, 30)}"
            self.longest[lt.index] = max(self.longest.get(lt.index, 0.0), dead_for)
            if dead_for > budget + self.slack:
                self.violations.append(f"tunnel {lt.index}: the VPC route pointed into it {dead_for:.1f}s after "
                                       f"it died (detection: {how} s + {self.slack:g} s slack)")
                self._alive_at[lt.index] = now  # one violation per episode
        self.looks += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.look()
            except Exception as e:  # the watch must not die silently
                self.violations.append(f"dead-tunnel watch failed: {e!r}")
