"""Kernel (XFRM) ESP data path: route-based xfrm interface (or VTI) per tunnel.

States carry the SA pair (UDP encapsulation template for NAT-T; outer addresses IPv4 or
IPv6; inner packets of either family, ``XFRM_STATE_AF_UNSPEC``), three policies
(any <-> any of the inner family: 0.0.0.0/0 or ::/0, out/in/fwd) bind traffic to the
interface through XFRMA_IF_ID (xfrm interface) or XFRMA_MARK (VTI).  All of it is tagged
with the data path's tag (reqid == if_id == mark, handed out by :data:`cgwd.esp.xfrm.TAGS`
in the 0x6367xxxx range, unique in the process), so that the first ``open`` of a process
removes whatever a crashed run left in that range and ``close`` removes exactly what this
object installed.

Lifetimes: time and byte limits from the SA pair, and packet limits standing for the
32-bit sequence number (soft 2**32 - 2**24, hard 2**32 - 1): the kernel's expire events
become :class:`SaExpiring` (soft: rekey now; hard: gone) and, for the hard packet limit
of the outbound state, :class:`SequenceExhausted`.

Refusals: :meth:`install` raises :class:`SaInstallError` with a reason (an algorithm the
kernel lacks, a reserved SPI, netlink refusing); a state left over with the same SPI
(EEXIST) is replaced, not a failure. :meth:`capabilities` says which transforms and
families this kernel takes (probed once per process over netlink).

TCP MSS: the kernel does not clamp by itself (the userspace path rewrites SYNs), so ``open``
adds two iptables (IPv6: ip6tables) mangle/FORWARD TCPMSS rules (``-o``/``-i`` the
interface, tagged with the comment ``cgwd-mss <ifname>``) when clamping is on; the MSS
follows the tunnel MTU, which follows the SA pair that sends unless configured. ``close``
and the next ``open`` after a crash remove them. Without iptables the path still works
(PMTU discovery), and status says the clamp is off and why.

Integration note: with the kernel path, UDP-encapsulated ESP is decapsulated by the
kernel only when the IKE endpoint's UDP 4500 socket has
``setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)`` (constants in
:mod:`cgwd.ipsec_sa`); the socket then only ever sees IKE (non-ESP-marker) packets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import shlex
import socket
import weakref

from cgwd.esp import xfrm
from cgwd.esp.datapath import Datapath, SaInstallError
from cgwd.esp.events import SaExpiring, SequenceExhausted
from cgwd.esp.mtu import transforms
from cgwd.esp.sa import SaPair
from cgwd.esp.xfrm import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT, XfrmError, XfrmSocket
from cgwd.ipsec_sa import UDP_ENCAP, UDP_ENCAP_ESPINUDP, EspCapabilities, IpsecSaPair

log = logging.getLogger(__name__)

DIRECTIONS = (XFRM_POLICY_OUT, XFRM_POLICY_IN, XFRM_POLICY_FWD)
FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _run_sync(fn):
    """Run blocking pyroute2 code off the event loop thread (pyroute2 0.9's sync
    IPRoute drives its own event loop and cannot run inside a running one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(fn).result()


def _probe_interface() -> tuple[bool, str, str]:
    """Try to create (and delete) an xfrm interface, else a VTI. (ok, mode, reason)."""
    from pyroute2 import IPRoute

    name = f"cgwprb{os.getpid() % 100000}"
    tag = xfrm.PROBE_TAG
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


_PROBE_KEYS = {"aes128": 16, "aes256": 32, "aes128gcm16": 20, "aes256gcm16": 36}
_PROBE_ICV = {"sha1": 96, "sha256": 128, "sha384": 192, "sha512": 256}
_PROBE_IKEY = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


def _try_state(xs: XfrmSocket, enc: str, integ: str | None, *, addr: str = "127.0.0.1",
               encap: tuple[int, int] | None = None) -> int:
    """Add and delete a throwaway state; 0 when the kernel took it, else the errno."""
    spi = xfrm.TAG_BASE | int.from_bytes(os.urandom(2), "big") | 0x100
    msg = xfrm.newsa(src=addr, dst=addr, spi=spi, encryption=enc, integrity=integ,
                     enc_key=os.urandom(_PROBE_KEYS[enc]), integ_key=os.urandom(_PROBE_IKEY[integ]) if integ else b"",
                     icv_bits=_PROBE_ICV[integ] if integ else 0, reqid=xfrm.PROBE_TAG,
                     replay_window=1024, encap=encap)
    try:
        xs.request(msg)
    except XfrmError as exc:
        return exc.errno
    try:
        xs.request(xfrm.delsa(dst=addr, spi=spi, src=addr))
    except XfrmError:
        pass
    return 0


def _probe_state() -> tuple[bool, str]:
    try:
        xs = XfrmSocket()
    except OSError as exc:
        return False, f"cannot open a NETLINK_XFRM socket: {exc}"
    try:
        err = _try_state(xs, "aes128", "sha1")
        if err == errno.EPROTONOSUPPORT:
            return False, ("kernel has no ESP (esp4): adding an XFRM state with proto esp "
                           "is rejected with EPROTONOSUPPORT")
        if err in (errno.ENOENT, errno.ENOSYS):
            return False, f"kernel lacks the ESP algorithms cbc(aes)/hmac(sha1) ({os.strerror(err)})"
        if err == errno.EPERM:
            return False, "not permitted to add XFRM states (needs CAP_NET_ADMIN)"
        if err:
            return False, f"adding a test XFRM state failed: {os.strerror(err)}"
        if _try_state(xs, "aes128gcm16", None) == 0:
            return True, "ESP states with AES-CBC/HMAC-SHA1 and AES-GCM accepted"
        return True, "ESP states with AES-CBC/HMAC-SHA1 accepted (no AES-GCM)"
    finally:
        xs.close()


def probe_capabilities() -> EspCapabilities:
    """What this kernel's XFRM takes, found by adding (and deleting) a throwaway state per
    transform, over IPv4 and IPv6, plain and UDP-encapsulated. Nothing if XFRM is unusable."""
    try:
        xs = XfrmSocket()
    except OSError as exc:
        return EspCapabilities(frozenset(), frozenset(), frozenset(), frozenset(), False, False,
                               why=f"no NETLINK_XFRM socket: {exc}")
    try:
        ok = [(e, i) for e, i in transforms() if _try_state(xs, e, i) == 0]
        enc = frozenset(e for e, _ in ok)
        integ = frozenset(i for _, i in ok if i is not None)
        if not ok:
            return EspCapabilities(frozenset(), frozenset(), frozenset(), frozenset(), False, False,
                                   why="kernel probe: the kernel takes no ESP state (no esp4, or none of the algorithms)")
        e0, i0 = ok[0]
        outer = {4}
        if os.path.exists("/proc/sys/net/ipv6") and _try_state(xs, e0, i0, addr="::1") == 0:
            outer.add(6)
        inner = {4, 6} if os.path.exists("/proc/sys/net/ipv6") else {4}
        encap = _try_state(xs, e0, i0, encap=(4500, 4500)) == 0
        missing = [f"{e}-{i}" if i else e for e, i in transforms() if (e, i) not in ok]
        why = "kernel probe: " + (f"lacks {', '.join(missing)}" if missing else "every transform")
        if 6 not in outer:
            why += "; no ESP over IPv6 (esp6)"
        return EspCapabilities(enc, integ, frozenset(outer), frozenset(inner), encap, True, why=why)
    finally:
        xs.close()


_CAPABILITIES: EspCapabilities | None = None


def kernel_capabilities() -> EspCapabilities:
    """:func:`probe_capabilities`, once per process."""
    global _CAPABILITIES
    if _CAPABILITIES is None:
        _CAPABILITIES = probe_capabilities()
    return _CAPABILITIES


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


def sweep_stale(xs: XfrmSocket) -> tuple[int, int]:
    """Remove every state and policy in cgwd's tag range (left by a run that did not
    stop cleanly), whatever tag it had. Returns (states, policies) removed."""
    n_states = n_pols = 0
    try:
        for mtype, body in xs.query(xfrm.dumpsa()):
            if mtype != xfrm.XFRM_MSG_NEWSA:
                continue
            st = xfrm.parse_usersa(body)
            if xfrm.is_ours(st["reqid"]) or xfrm.is_ours(st["if_id"]):
                try:
                    xs.request(xfrm.delsa(dst=st["dst"], spi=st["spi"], src=st["src"], mark=st["mark"]))
                    n_states += 1
                except XfrmError:
                    pass
    except XfrmError as exc:
        log.warning("could not list XFRM states: %s", exc)
    try:
        for mtype, body in xs.query(xfrm.dumppolicy()):
            if mtype != xfrm.XFRM_MSG_NEWPOLICY:
                continue
            p = xfrm.parse_userpolicy(body)
            if xfrm.policy_is_ours(p):
                try:
                    xs.request(xfrm.delpolicy(direction=p["dir"], index=p["index"], if_id=p["if_id"],
                                              mark=p["mark"], mark_mask=p["mark_mask"]))
                    n_pols += 1
                except XfrmError:
                    pass
    except XfrmError as exc:
        log.warning("could not list XFRM policies: %s", exc)
    return n_states, n_pols


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
        self.tag = xfrm.TAGS.acquire()
        self._release_tag = weakref.finalize(self, xfrm.TAGS.release, self.tag)
        self.mode = "xfrmi"
        self._xs: XfrmSocket | None = None
        self._events: XfrmSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pairs: dict[int, SaPair] = {}
        self._drops: dict[str, int] = {}
        self._policies_for: tuple[str, str, int] | None = None
        self._link_created = False
        self.findings: list = []
        self.iptables = "ip6tables" if self.inner_family == 6 else "iptables"
        self.mss_clamp = "off: mss = 0 in the configuration" if not self.mss else "not installed yet"
        self._mss_rules: list[list[str]] = []  # -A arguments of the rules we installed
        self._mss_lock = asyncio.Lock()
        self._mss_task: asyncio.Task | None = None

    def capabilities(self) -> EspCapabilities:
        return kernel_capabilities()

    # -------------------------------------------------------------- helpers
    def _ids(self) -> dict:
        if self.mode == "xfrmi":
            return {"if_id": self.tag}
        return {"mark": self.tag}

    def _mark(self) -> dict:
        return {"mark": self.tag} if self.mode == "vti" else {}

    def _req(self, msg: bytes, ignore: tuple[int, ...] = ()) -> None:
        try:
            self._xs.request(msg)
        except XfrmError as exc:
            if exc.errno not in ignore:
                raise

    @property
    def _inner_af(self) -> int:
        return socket.AF_INET6 if self.inner_family == 6 else socket.AF_INET

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

        from cgwd.system_checks import configure_interface

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
            self.findings = configure_interface(self.ifname, inner_family=self.inner_family)
            for f in self.findings:
                log.warning("%s: %s (fix: %s)", self.name, f.what, f.fix)
            await ipr.addr("add", index=idx, address=str(self.inside.ip), prefixlen=self.inside.network.prefixlen)
            await ipr.link("set", index=idx, state="up")
        finally:
            ipr.close()

    def _mtu_changed(self, mtu: int) -> None:
        if self._link_created:
            self._set_link_mtu(mtu)
        if self._mss_rules and self.mss:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._mss_task = loop.create_task(self._update_mss_clamp())

    def _mss_value(self) -> int:
        return self.mss6 if self.inner_family == 6 else self.mss

    async def _install_mss_clamp(self) -> None:
        async with self._mss_lock:
            await self._add_mss_rules(self._mss_value())

    async def _add_mss_rules(self, mss: int) -> bool:
        done = []
        for args in mss_rule_args(self.ifname, mss):
            rc, out = await _run(self.iptables, "-w", "5", "-t", "mangle", "-A", *args)
            if rc != 0:
                for a in done:
                    await _run(self.iptables, "-w", "5", "-t", "mangle", "-D", *a)
                why = f"{self.iptables} is not installed" if rc == 127 else f"{self.iptables} failed: {out[-200:]}"
                self.mss_clamp = f"off: {why} (TCP relies on path MTU discovery)"
                log.warning("%s: TCP MSS clamp to %d not installed: %s", self.name, mss, why)
                return False
            done.append(args)
        self._mss_rules = done
        self.mss_clamp = f"{mss} ({self.iptables} mangle FORWARD TCPMSS on {self.ifname})"
        return True

    async def _update_mss_clamp(self) -> None:
        """The MTU changed: new rules first, then the old ones go (no SYN unclamped)."""
        async with self._mss_lock:
            old = self._mss_rules
            want = self._mss_value()
            if not old or old[0][-1] == str(want):
                return
            if await self._add_mss_rules(want):
                for args in old:
                    await _run(self.iptables, "-w", "5", "-t", "mangle", "-D", *args)

    async def _remove_mss_clamp(self, stale: bool = False) -> None:
        """Our rules: the ones this object added, or (``stale``) whatever an earlier run left."""
        async with self._mss_lock:
            if stale:
                rc, out = await _run(f"{self.iptables}-save", "-t", "mangle")
                if rc != 0:
                    return
                rules = stale_mss_rules(out, self.ifname)
                if rules:
                    log.info("%s: removing %d TCP MSS rules left by an earlier run", self.name, len(rules))
            else:
                rules = self._mss_rules
            for args in rules:
                await _run(self.iptables, "-w", "5", "-t", "mangle", "-D", *args)
            if not stale:
                self._mss_rules = []

    def _cleanup_stale(self) -> None:
        """The first data path of the process removes every state and policy in cgwd's tag
        range (tags are handed out afresh each run); later ones only their own tag."""
        if not xfrm.TAGS.swept:
            xfrm.TAGS.swept = True
            n_states, n_pols = sweep_stale(self._xs)
            if n_states or n_pols:
                log.warning("removed %d XFRM states and %d policies left by an earlier run", n_states, n_pols)
            return
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
        self._delete_policies()

    def _delete_policies(self, ids: list[dict] | None = None) -> None:
        for d in DIRECTIONS:
            for fam in FAMILIES:
                for i in ids or ({"if_id": self.tag}, {"mark": self.tag}):
                    self._req(xfrm.delpolicy(direction=d, inner_family=fam, **i), ignore=(errno.ENOENT, errno.ESRCH))

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
            self._delete_policies([self._ids()])
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
        self._release_tag()

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

    def _add_state(self, msg: bytes, dst: str, spi: int, src: str, pair: IpsecSaPair) -> None:
        """Add one state; one left over with the same (dst, SPI) is replaced (EEXIST)."""
        try:
            self._xs.request(msg)
            return
        except XfrmError as exc:
            err = exc
        if err.errno == errno.EEXIST:
            log.warning("%s: replacing a stale XFRM state dst %s spi 0x%08x", self.name, dst, spi)
            try:
                self._xs.request(xfrm.delsa(dst=dst, spi=spi, **self._mark()))
                self._xs.request(msg)
                return
            except XfrmError as exc:
                err = exc
        reason = "unsupported_algorithm" if err.errno in (errno.ENOENT, errno.ENOSYS) else "kernel_refused"
        raise SaInstallError(reason, f"the kernel refused the XFRM state dst {dst} spi 0x{spi:08x} "
                             f"({pair.describe()}): {err.strerror}", pair.spi_in)

    def install(self, pair: IpsecSaPair, *, outbound: bool = True) -> None:
        """``outbound`` is not honoured: the kernel sends on the newest state at once
        (``pending_outbound`` is False)."""
        if self._xs is None:
            raise SaInstallError("not_open", "the kernel data path is not open", pair.spi_in)
        if pair.spi_in in self._pairs:
            raise SaInstallError("duplicate_spi", f"SA with inbound SPI 0x{pair.spi_in:08x} already installed",
                                 pair.spi_in)
        self.check_installable(pair)
        try:
            sp = SaPair(pair, replay_window=self.replay_window, now=self.clock())
        except ValueError as exc:
            raise SaInstallError("invalid_pair", str(exc), pair.spi_in) from None
        msg_in, msg_out = self.state_messages(sp)
        self._add_state(msg_in, pair.local_address, pair.spi_in, pair.remote_address, pair)  # valid at once
        try:
            # the newest outbound state wins in the kernel's lookup
            self._add_state(msg_out, pair.remote_address, pair.spi_out, pair.local_address, pair)
        except SaInstallError:
            self._req(xfrm.delsa(dst=pair.local_address, spi=pair.spi_in, src=pair.remote_address, **self._mark()),
                      ignore=(errno.ESRCH, errno.ENOENT))
            raise
        key = (pair.local_address, pair.remote_address, pair.inner_family)
        if self._policies_for != key:
            fam = socket.AF_INET6 if pair.inner_family == 6 else socket.AF_INET
            try:
                for d, s, t in ((XFRM_POLICY_OUT, key[0], key[1]), (XFRM_POLICY_IN, key[1], key[0]),
                                (XFRM_POLICY_FWD, key[1], key[0])):
                    self._req(xfrm.newpolicy(direction=d, tmpl_src=s, tmpl_dst=t, reqid=self.tag,
                                             update=True, inner_family=fam, **self._ids()))
            except XfrmError as exc:
                self._delete_states(pair)
                raise SaInstallError("kernel_refused", f"the kernel refused the XFRM policies for "
                                     f"{pair.describe()}: {exc.strerror}", pair.spi_in) from None
            self._policies_for = key
        self._pairs[pair.spi_in] = sp
        self._follow(pair)
        log.info("%s: installed %s in the kernel", self.name, pair.describe())

    def _delete_states(self, p: IpsecSaPair) -> None:
        for dst, spi, src in ((p.local_address, p.spi_in, p.remote_address),
                              (p.remote_address, p.spi_out, p.local_address)):
            self._req(xfrm.delsa(dst=dst, spi=spi, src=src, **self._mark()), ignore=(errno.ESRCH, errno.ENOENT))

    def remove(self, spi_in: int) -> None:
        sp = self._pairs.pop(spi_in, None)
        if sp is None or self._xs is None:
            return
        self._delete_states(sp.pair)

    def remove_all(self) -> None:
        for spi in list(self._pairs):
            self.remove(spi)

    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        # The kernel decapsulates ESP-in-UDP itself (UDP_ENCAP on the IKE socket).
        self._drops["esp_on_ike_socket"] = self._drops.get("esp_on_ike_socket", 0) + 1

    # -------------------------------------------------------------- events and stats
    def expire_events(self, st: dict, hard: bool) -> list:
        """What one XFRM expire message (``parse_expire``) means for our pairs; a hard
        expiry's pair is forgotten here (the kernel deleted that state; the other goes too).

        Soft limits: :class:`SaExpiring` (rekey now). Hard: :class:`SaExpiring` with
        ``hard=True``, or :class:`SequenceExhausted` when the outbound state reached its
        packet limit (the 32-bit sequence number is used up)."""
        if st["reqid"] != self.tag:
            return []
        out = []
        for spi_in, sp in list(self._pairs.items()):
            if st["spi"] not in (sp.spi_in, sp.spi_out):
                continue
            if hard:
                self._pairs.pop(spi_in, None)
                if self._xs is not None:
                    self._delete_states(sp.pair)
                if sp.hard_fired:
                    continue
                sp.hard_fired = sp.soft_fired = True
                used_up = st["spi"] == sp.spi_out and st["packets"] >= st["hard_packet_limit"]
                if used_up:
                    sp.seq_exhausted_fired = True
                out.append(SequenceExhausted(spi_in) if used_up else SaExpiring(spi_in, True))
            elif not sp.soft_fired:
                sp.soft_fired = True
                out.append(SaExpiring(spi_in, False))
        return out

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
                    for ev in self.expire_events(*xfrm.parse_expire(body)):
                        try:
                            self.on_event(ev)
                        except Exception:
                            log.exception("%s: event handler failed", self.name)
            except Exception:
                log.exception("%s: bad XFRM expire message", self.name)

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
                    st.update(packets_out=cout["packets"], bytes_out=cout["bytes"], seq_out=cout["packets"])
            sas.append(st)
        return {"kind": self.kind, "ifname": self.ifname, "inside": str(self.inside),
                "inner_family": self.inner_family, "mtu": self.mtu, "mss": self.mss, "mss6": self.mss6,
                "mode": self.mode, "tag": f"0x{self.tag:08x}", "mss_clamp": self.mss_clamp, "sas": sas,
                "drops": dict(self._drops), "system": [f.as_dict() for f in self.findings]}


__all__ = ["KernelDatapath", "probe_kernel", "probe_capabilities", "kernel_capabilities", "sweep_stale",
           "UDP_ENCAP", "UDP_ENCAP_ESPINUDP"]
