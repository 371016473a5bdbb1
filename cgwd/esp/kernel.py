"""Kernel (XFRM) ESP data path: route-based xfrm interface (or VTI) per tunnel.

States carry the SA pair (UDP encapsulation template for NAT-T), three policies
(0.0.0.0/0 <-> 0.0.0.0/0 out/in/fwd) bind traffic to the interface through
XFRMA_IF_ID (xfrm interface) or XFRMA_MARK (VTI).  All of it is tagged with the
tunnel's tag (reqid == if_id == mark == :func:`cgwd.esp.xfrm.tag_for(ifname)`, inside
the 0x6367xxxx range) so that ``open`` can remove what a crashed run left behind and
``close`` removes exactly what this object installed.

TCP MSS: the kernel does not clamp by itself (the userspace path rewrites SYNs), so ``open``
adds two iptables mangle/FORWARD TCPMSS rules (``-o``/``-i`` the interface, tagged with the
comment ``cgwd-mss <ifname>``) when ``mss`` is set; ``close`` and the next ``open`` after a
crash remove them. Without iptables the path still works (PMTU discovery), and status says
the clamp is off and why.

Integration note: with the kernel path, UDP-encapsulated ESP is decapsulated by the
kernel only when the IKE endpoint's UDP 4500 socket has
``setsockopt(IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)`` (100 = UDP_ENCAP,
2 = ESPINUDP); the socket then only ever sees IKE (non-ESP-marker) packets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import shlex

from cgwd.esp.datapath import Datapath
from cgwd.esp.events import SaExpiring
from cgwd.esp.sa import SaPair
from cgwd.esp import xfrm
from cgwd.esp.xfrm import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT, XfrmError, XfrmSocket
from cgwd.ipsec_sa import IpsecSaPair

log = logging.getLogger(__name__)

UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2


def _run_sync(fn):
    """Run blocking pyroute2 code off the event loop thread (pyroute2 0.9's sync
    IPRoute drives its own event loop and cannot run inside a running one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(fn).result()


def _probe_interface() -> tuple[bool, str, str]:
    """Try to create (and delete) an xfrm interface, else a VTI. (ok, mode, reason)."""
    from pyroute2 import IPRoute

    name = f"cgwprb{os.getpid() % 100000}"
    tag = xfrm.TAG_BASE | 0xFFFF
    errors = []
    with IPRoute() as ipr:
        for kind, extra in (("xfrm", {"xfrm_if_id": tag}), ("xfrm", {"xfrm_if_id": tag, "xfrm_link": 1}),
                            ("vti", {"vti_ikey": tag, "vti_okey": tag, "vti_local": "127.0.0.1"})):
            try:
                ipr.link("add", ifname=name, kind=kind, **extra)
            except Exception as exc:  # NetlinkError: EOPNOTSUPP etc.
                errors.append(f"{kind}: {exc}")
                continue
            try:
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    ipr.link("del", index=idx[0])
            except Exception:
                pass
            return True, ("xfrmi" if kind == "xfrm" else "vti"), f"{kind} interfaces work"
    return False, "", "no xfrm interface or VTI support (" + "; ".join(errors) + ")"


def _probe_state() -> tuple[bool, str]:
    try:
        xs = XfrmSocket()
    except OSError as exc:
        return False, f"cannot open a NETLINK_XFRM socket: {exc}"
    spi = xfrm.TAG_BASE | int.from_bytes(os.urandom(2), "big") | 0x100
    try:
        msg = xfrm.newsa(src="127.0.0.1", dst="127.0.0.1", spi=spi, encryption="aes128",
                         integrity="sha1", enc_key=os.urandom(16), integ_key=os.urandom(20),
                         icv_bits=96, reqid=xfrm.TAG_BASE, replay_window=1024)
        try:
            xs.request(msg)
        except XfrmError as exc:
            if exc.errno == errno.EPROTONOSUPPORT:
                return False, ("kernel has no ESP (esp4): adding an XFRM state with proto esp "
                               "is rejected with EPROTONOSUPPORT")
            if exc.errno in (errno.ENOENT, errno.ENOSYS):
                return False, f"kernel lacks the ESP algorithms cbc(aes)/hmac(sha1) ({exc.strerror})"
            if exc.errno == errno.EPERM:
                return False, "not permitted to add XFRM states (needs CAP_NET_ADMIN)"
            return False, f"adding a test XFRM state failed: {exc.strerror}"
        try:
            xs.request(xfrm.delsa(dst="127.0.0.1", spi=spi, src="127.0.0.1"))
        except XfrmError:
            pass
        gcm = xfrm.newsa(src="127.0.0.1", dst="127.0.0.1", spi=spi, encryption="aes128gcm16",
                         integrity=None, enc_key=os.urandom(20), reqid=xfrm.TAG_BASE)
        try:
            xs.request(gcm)
            xs.request(xfrm.delsa(dst="127.0.0.1", spi=spi, src="127.0.0.1"))
            return True, "ESP states with AES-CBC/HMAC-SHA1 and AES-GCM accepted"
        except XfrmError:
            return True, "ESP states with AES-CBC/HMAC-SHA1 accepted (no AES-GCM)"
    finally:
        xs.close()


def probe_kernel() -> tuple[bool, str]:
    ok, why = _probe_state()
    if not ok:
        return False, why
    try:
        iok, mode, iwhy = _run_sync(_probe_interface)
    except Exception as exc:
        return False, f"{why}; but interface probe failed: {exc}"
    if not iok:
        return False, f"{why}; but {iwhy}"
    return True, f"{why}; {iwhy}"


MSS_COMMENT = "cgwd-mss"


def mss_rule_args(ifname: str, mss: int) -> list[list[str]]:
    """``iptables -t mangle -A|-D`` arguments of the two TCPMSS rules for ``ifname``
    (SYNs forwarded out of and in from the tunnel interface)."""
    return [["FORWARD", d, ifname, "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-m", "comment",
             "--comment", f"{MSS_COMMENT} {ifname}", "-j", "TCPMSS", "--set-mss", str(mss)]
            for d in ("-o", "-i")]


def stale_mss_rules(save_output: str, ifname: str) -> list[list[str]]:
    """The rules for ``ifname`` in ``iptables-save -t mangle`` output, as ``-D`` arguments
    (whatever MSS they set: the configuration may have changed since)."""
    out = []
    for line in save_output.splitlines():
        if not line.startswith("-A FORWARD "):
            continue
        try:
            args = shlex.split(line)
        except ValueError:
            continue
        if "--comment" in args and args[args.index("--comment") + 1:][:1] == [f"{MSS_COMMENT} {ifname}"]:
            out.append(args[1:])
    return out


async def _run(*cmd: str) -> tuple[int, str]:
    """(exit status, output) of a short command; 127 when it is not installed."""
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return 127, str(exc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "timed out"
    return proc.returncode, out.decode(errors="replace").strip()


class KernelDatapath(Datapath):
    kind = "kernel"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.tag = xfrm.tag_for(self.ifname)
        self.mode = "xfrmi"
        self._xs: XfrmSocket | None = None
        self._events: XfrmSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pairs: dict[int, SaPair] = {}
        self._drops: dict[str, int] = {}
        self._policies_for: tuple[str, str] | None = None
        self._link_created = False
        self.mss_clamp = "off: mss = 0 in the configuration" if not self.mss else "not installed yet"
        self._mss_installed = False

    # -------------------------------------------------------------- helpers
    def _ids(self) -> dict:
        if self.mode == "xfrmi":
            return {"if_id": self.tag}
        return {"mark": self.tag}

    def _req(self, msg: bytes, ignore: tuple[int, ...] = ()) -> None:
        try:
            self._xs.request(msg)
        except XfrmError as exc:
            if exc.errno not in ignore:
                raise

    # -------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._xs = XfrmSocket()
        self._cleanup_stale()
        await self._create_link()
        await self._remove_mss_clamp(stale=True)
        if self.mss:
            await self._install_mss_clamp()
        try:
            self._events = XfrmSocket(groups=xfrm.XFRMGRP_EXPIRE)
            self._events.sock.setblocking(False)
            self._loop.add_reader(self._events.fileno(), self._on_expire)
        except OSError as exc:
            log.warning("%s: no XFRM expire events: %s", self.name, exc)
            self._events = None

    async def _create_link(self) -> None:
        from pyroute2 import AsyncIPRoute

        ipr = AsyncIPRoute()
        try:
            old = await ipr.link_lookup(ifname=self.ifname)
            if old:  # left over by a crashed run (the name is ours by configuration)
                await ipr.link("del", index=old[0])
            last = None
            for kind, extra, mode in (
                ("xfrm", {"xfrm_if_id": self.tag}, "xfrmi"),
                ("xfrm", {"xfrm_if_id": self.tag, "xfrm_link": 1}, "xfrmi"),
                ("vti", {"vti_ikey": self.tag, "vti_okey": self.tag, "vti_local": self.local_address}, "vti"),
            ):
                try:
                    await ipr.link("add", ifname=self.ifname, kind=kind, **extra)
                    self.mode = mode
                    break
                except Exception as exc:
                    last = exc
            else:
                raise OSError(errno.EOPNOTSUPP, f"cannot create xfrm interface or VTI {self.ifname}: {last}")
            self._link_created = True
            idx = (await ipr.link_lookup(ifname=self.ifname))[0]
            await ipr.link("set", index=idx, mtu=self.mtu)
            await ipr.addr("add", index=idx, address=str(self.inside.ip), prefixlen=self.inside.network.prefixlen)
            await ipr.link("set", index=idx, state="up")
        finally:
            ipr.close()

    async def _install_mss_clamp(self) -> None:
        done = []
        for args in mss_rule_args(self.ifname, self.mss):
            rc, out = await _run("iptables", "-w", "5", "-t", "mangle", "-A", *args)
            if rc != 0:
                for a in done:
                    await _run("iptables", "-w", "5", "-t", "mangle", "-D", *a)
                why = "iptables is not installed" if rc == 127 else f"iptables failed: {out[-200:]}"
                self.mss_clamp = f"off: {why} (TCP relies on path MTU discovery)"
                log.warning("%s: TCP MSS clamp to %d not installed: %s", self.name, self.mss, why)
                return
            done.append(args)
        self._mss_installed = True
        self.mss_clamp = f"{self.mss} (iptables mangle FORWARD TCPMSS on {self.ifname})"

    async def _remove_mss_clamp(self, stale: bool = False) -> None:
        """Our rules: the ones this object added, or (``stale``) whatever an earlier run left."""
        if stale:
            rc, out = await _run("iptables-save", "-t", "mangle")
            if rc != 0:
                return
            rules = stale_mss_rules(out, self.ifname)
            if rules:
                log.info("%s: removing %d TCP MSS rules left by an earlier run", self.name, len(rules))
        elif self._mss_installed:
            rules = mss_rule_args(self.ifname, self.mss)
        else:
            return
        for args in rules:
            await _run("iptables", "-w", "5", "-t", "mangle", "-D", *args)
        self._mss_installed = False

    def _cleanup_stale(self) -> None:
        """Remove states and policies with our tag left by an earlier run."""
        try:
            for mtype, body in self._xs.query(xfrm.dumpsa()):
                if mtype != xfrm.XFRM_MSG_NEWSA:
                    continue
                st = xfrm.parse_usersa(body)
                if st["reqid"] == self.tag:
                    self._req(xfrm.delsa(dst=st["dst"], spi=st["spi"], src=st["src"], mark=st["mark"]),
                              ignore=(errno.ESRCH, errno.ENOENT))
        except XfrmError as exc:
            log.warning("%s: could not list XFRM states: %s", self.name, exc)
        for d in (XFRM_POLICY_OUT, XFRM_POLICY_IN, XFRM_POLICY_FWD):
            for ids in ({"if_id": self.tag}, {"mark": self.tag}):
                self._req(xfrm.delpolicy(direction=d, **ids), ignore=(errno.ENOENT, errno.ESRCH))

    async def close(self) -> None:
        try:
            await self._remove_mss_clamp()
        except Exception:  # noqa: BLE001 - the rest of the teardown must still run
            log.exception("%s: removing the TCP MSS rules failed", self.name)
        if self._events is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
        if self._xs is not None:
            self.remove_all()
            for d in (XFRM_POLICY_OUT, XFRM_POLICY_IN, XFRM_POLICY_FWD):
                self._req(xfrm.delpolicy(direction=d, **self._ids()), ignore=(errno.ENOENT, errno.ESRCH))
            self._policies_for = None
            self._xs.close()
            self._xs = None
        if self._link_created:
            from pyroute2 import AsyncIPRoute

            ipr = AsyncIPRoute()
            try:
                idx = await ipr.link_lookup(ifname=self.ifname)
                if idx:
                    await ipr.link("del", index=idx[0])
            finally:
                ipr.close()
            self._link_created = False

    # -------------------------------------------------------------- SAs
    def state_messages(self, sp: SaPair) -> list[bytes]:
        """XFRM_MSG_NEWSA for the inbound and the outbound state of ``sp``."""
        p = sp.pair
        out = []
        for sa, src, dst, encap in (
            (sp.inbound, p.remote_address, p.local_address, (p.remote_port, p.local_port)),
            (sp.outbound, p.local_address, p.remote_address, (p.local_port, p.remote_port)),
        ):
            out.append(xfrm.newsa(
                src=src, dst=dst, spi=sa.spi, encryption=sa.alg.encryption, integrity=sa.alg.integrity,
                enc_key=sa.enc_key + sa.salt, integ_key=sa.integ_key, icv_bits=sa.alg.icv_bytes * 8,
                reqid=self.tag, replay_window=sa.replay_window_size if sa.direction == "in" else 0,
                lifetime=sp.lifetime, encap=encap if p.udp_encap else None, **self._ids(),
            ))
        return out

    def install(self, pair: IpsecSaPair) -> None:
        if pair.spi_in in self._pairs:
            raise ValueError(f"SA with inbound SPI 0x{pair.spi_in:08x} already installed")
        sp = SaPair(pair, replay_window=self.replay_window)
        msgs = self.state_messages(sp)
        self._xs.request(msgs[0])  # inbound first: valid immediately
        try:
            self._xs.request(msgs[1])  # newest outbound state wins in the kernel's lookup
        except XfrmError:
            self._req(xfrm.delsa(dst=pair.local_address, spi=pair.spi_in, src=pair.remote_address,
                                 **({"mark": self.tag} if self.mode == "vti" else {})), ignore=(errno.ESRCH,))
            raise
        addrs = (pair.local_address, pair.remote_address)
        if self._policies_for != addrs:
            for d, s, t in ((XFRM_POLICY_OUT, addrs[0], addrs[1]), (XFRM_POLICY_IN, addrs[1], addrs[0]),
                            (XFRM_POLICY_FWD, addrs[1], addrs[0])):
                self._req(xfrm.newpolicy(direction=d, tmpl_src=s, tmpl_dst=t, reqid=self.tag,
                                         update=True, **self._ids()))
            self._policies_for = addrs
        self._pairs[pair.spi_in] = sp
        log.info("%s: installed %s in the kernel", self.name, pair.describe())

    def remove(self, spi_in: int) -> None:
        sp = self._pairs.pop(spi_in, None)
        if sp is None or self._xs is None:
            return
        p = sp.pair
        mark = {"mark": self.tag} if self.mode == "vti" else {}
        self._req(xfrm.delsa(dst=p.local_address, spi=p.spi_in, src=p.remote_address, **mark),
                  ignore=(errno.ESRCH, errno.ENOENT))
        self._req(xfrm.delsa(dst=p.remote_address, spi=p.spi_out, src=p.local_address, **mark),
                  ignore=(errno.ESRCH, errno.ENOENT))

    def remove_all(self) -> None:
        for spi in list(self._pairs):
            self.remove(spi)

    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        # The kernel decapsulates ESP-in-UDP itself (UDP_ENCAP on the IKE socket).
        self._drops["esp_on_ike_socket"] = self._drops.get("esp_on_ike_socket", 0) + 1

    # -------------------------------------------------------------- events and stats
    def _on_expire(self) -> None:
        for _ in range(64):
            try:
                data = self._events.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                for mtype, _f, _s, body in xfrm.iter_messages(data):
                    if mtype != xfrm.XFRM_MSG_EXPIRE:
                        continue
                    st, hard = xfrm.parse_expire(body)
                    if st["reqid"] != self.tag:
                        continue
                    for spi_in, sp in list(self._pairs.items()):
                        if st["spi"] in (sp.spi_in, sp.spi_out):
                            if hard:
                                self._pairs.pop(spi_in, None)  # the kernel deleted the state
                                self.remove_state_leftovers(sp)
                            if not (sp.hard_fired if hard else sp.soft_fired):
                                if hard:
                                    sp.hard_fired = True
                                sp.soft_fired = True
                                try:
                                    self.on_event(SaExpiring(spi_in, hard))
                                except Exception:
                                    log.exception("%s: event handler failed", self.name)
            except Exception:
                log.exception("%s: bad XFRM expire message", self.name)

    def remove_state_leftovers(self, sp: SaPair) -> None:
        p = sp.pair
        mark = {"mark": self.tag} if self.mode == "vti" else {}
        for dst, spi, src in ((p.local_address, p.spi_in, p.remote_address),
                              (p.remote_address, p.spi_out, p.local_address)):
            self._req(xfrm.delsa(dst=dst, spi=spi, src=src, **mark), ignore=(errno.ESRCH, errno.ENOENT))

    def _kernel_counters(self, dst: str, spi: int) -> dict | None:
        try:
            res = self._xs.query(xfrm.getsa(dst=dst, spi=spi, mark=self.tag if self.mode == "vti" else None))
        except (XfrmError, OSError):
            return None
        for mtype, body in res:
            if mtype == xfrm.XFRM_MSG_NEWSA:
                return xfrm.parse_usersa(body)
        return None

    def stats(self) -> dict:
        sas = []
        for sp in self._pairs.values():
            st = sp.stats()
            p = sp.pair
            if self._xs is not None:
                cin = self._kernel_counters(p.local_address, p.spi_in)
                cout = self._kernel_counters(p.remote_address, p.spi_out)
                if cin:
                    st.update(packets_in=cin["packets"], bytes_in=cin["bytes"],
                              replay_drops=cin["replay"], auth_failures=cin["integrity_failed"])
                if cout:
                    st.update(packets_out=cout["packets"], bytes_out=cout["bytes"])
            sas.append(st)
        return {"kind": self.kind, "ifname": self.ifname, "inside": str(self.inside), "mtu": self.mtu,
                "mode": self.mode, "tag": f"0x{self.tag:08x}", "mss_clamp": self.mss_clamp, "sas": sas,
                "drops": dict(self._drops)}


__all__ = ["KernelDatapath", "probe_kernel", "UDP_ENCAP", "UDP_ENCAP_ESPINUDP"]
