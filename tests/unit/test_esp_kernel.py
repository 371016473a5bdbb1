"""The kernel data path's edges that this (ESP-less) kernel can still exercise: expire
events (sequence number limits), install refusals with reasons, stale-state replacement,
the sweep of a crashed run's tags, the MSS clamp following the MTU. The QEMU tier
(tests/qemu) runs the same code against a kernel with ESP."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from cgwd.esp import kernel as kmod
from cgwd.esp import xfrm
from cgwd.esp.datapath import SaInstallError
from cgwd.esp.events import SaExpiring, SequenceExhausted
from cgwd.esp.kernel import KernelDatapath
from cgwd.esp.sa import SEQ_HARD_LIMIT, SEQ_SOFT_LIMIT, SaPair
from cgwd.ipsec_sa import ALL_CAPABILITIES, EspCapabilities, IpsecSaPair

INSIDE = ipaddress.IPv4Interface("169.254.10.2/30")
needs_ns = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                              reason="needs root and unshare(1)")


def pair(spi_in=0x1001, spi_out=0x2002, **kw):
    kw.setdefault("local_address", "192.0.2.2")
    kw.setdefault("remote_address", "198.51.100.1")
    return IpsecSaPair(spi_in, spi_out, "aes128", "sha1", bytes(16), bytes(16), bytes(20), bytes(20), **kw)


def dp_with(*pairs, events=None):
    dp = KernelDatapath(name="k", ifname="cgw-k", inside=INSIDE, send_udp=None,
                        on_event=(events.append if events is not None else print), local_address="192.0.2.2")
    for p in pairs:
        dp._pairs[p.spi_in] = SaPair(p)
    return dp


def expire_msg(spi, reqid, hard, packets=0, dst="198.51.100.1"):
    """An XFRM_MSG_EXPIRE as the kernel sends it (state with limits and counters)."""
    exp = xfrm.xfrm_user_expire()
    st = exp.state
    st.id.daddr = xfrm._addr(dst)
    st.id.spi[:] = list(spi.to_bytes(4, "big"))
    st.id.proto = socket.IPPROTO_ESP
    st.family = socket.AF_INET
    st.reqid = reqid
    st.lft.soft_packet_limit = SEQ_SOFT_LIMIT
    st.lft.hard_packet_limit = SEQ_HARD_LIMIT
    st.curlft.packets = packets
    exp.hard = 1 if hard else 0
    return xfrm.nlmsg(xfrm.XFRM_MSG_EXPIRE, 0, bytes(exp))


class _Events:
    """dp._events stand-in: the read end of a datagram socket pair."""

    def __init__(self, sock):
        self.sock = sock


def feed(dp, *msgs):
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.setblocking(False)
    for m in msgs:
        w.send(m)
    dp._events = _Events(r)
    dp._on_expire()
    r.close()
    w.close()


def test_expire_events_soft_hard_and_sequence_exhausted():
    events = []
    p1, p2 = pair(0x1001, 0x2002), pair(0x1003, 0x2004)
    dp = dp_with(p1, p2, events=events)
    tag = dp.tag
    # in order: the outbound state nears the end; the inbound state's soft limit too (one
    # event per pair); someone else's tag; the outbound state used up; the other state of
    # that pair (already gone); an inbound state's hard time/byte limit
    msgs = [expire_msg(0x2002, tag, hard=False, packets=SEQ_SOFT_LIMIT),
            expire_msg(0x1001, tag, hard=False),
            expire_msg(0x2002, tag + 1, hard=True, packets=SEQ_HARD_LIMIT),
            expire_msg(0x2002, tag, hard=True, packets=SEQ_HARD_LIMIT),
            expire_msg(0x1001, tag, hard=True),
            expire_msg(0x1003, tag, hard=True, packets=10, dst="192.0.2.2")]
    feed(dp, *msgs)
    assert events == [SaExpiring(0x1001, False), SequenceExhausted(0x1001), SaExpiring(0x1003, True)]
    assert dp._pairs == {}


def test_capability_refusals():
    none = EspCapabilities(frozenset(), frozenset(), frozenset(), frozenset(), False, False, why="no esp4")
    assert none.refusal(pair())[0] == "unsupported_algorithm" and "no esp4" in none.refusal(pair())[1]
    cbc = EspCapabilities(frozenset({"aes128"}), frozenset({"sha1"}), frozenset({4}), frozenset({4}))
    assert cbc.refusal(pair()) is None and cbc.esp_allowed() == {"aes128", "sha1"}
    assert not cbc.supports("aes128gcm16", None) and not cbc.supports("aes128", "sha256")
    assert cbc.refusal(pair(local_address="2001:db8::2", remote_address="2001:db8::1"))[0] == "unsupported_family"
    assert cbc.refusal(pair(local_ts="::/0", remote_ts="::/0"))[0] == "unsupported_family"
    assert ALL_CAPABILITIES.esp_allowed() >= {"aes128", "aes256", "aes128gcm16", "aes256gcm16", "sha512"}


class StandIn:
    """A NETLINK_XFRM socket stand-in: records requests, answers with scripted errors
    (the real kernel's EEXIST path runs in the QEMU tier)."""

    def __init__(self, errors=None):
        self.requests = []
        self.errors = dict(errors or {})  # (mtype, spi or None, nth) -> errno

    def request(self, msg):
        mtype = int.from_bytes(msg[4:6], "little")
        spi = None
        if mtype == xfrm.XFRM_MSG_NEWSA:
            spi = xfrm.parse_usersa(msg[16:])["spi"]
        nth = sum(1 for t, s in self.requests if (t, s) == (mtype, spi))
        self.requests.append((mtype, spi))
        err = self.errors.get((mtype, spi, nth))
        if err:
            raise xfrm.XfrmError(err, os.strerror(err))

    def query(self, msg):
        return []

    def close(self):
        pass


@pytest.fixture
def all_caps(monkeypatch):
    monkeypatch.setattr(kmod, "_CAPABILITIES", ALL_CAPABILITIES)


def test_stale_state_is_replaced_not_a_failure(all_caps):
    dp = dp_with()
    dp._xs = StandIn({(xfrm.XFRM_MSG_NEWSA, 0x1001, 0): errno.EEXIST})
    dp.install(pair())
    kinds = [t for t, _ in dp._xs.requests]
    assert kinds[:3] == [xfrm.XFRM_MSG_NEWSA, xfrm.XFRM_MSG_DELSA, xfrm.XFRM_MSG_NEWSA]
    assert 0x1001 in dp._pairs


@pytest.mark.parametrize("err,reason", [(errno.ENOENT, "unsupported_algorithm"), (errno.EINVAL, "kernel_refused"),
                                        (errno.EEXIST, "kernel_refused")])
def test_refused_outbound_state_leaves_nothing(all_caps, err, reason):
    dp = dp_with()
    errors = {(xfrm.XFRM_MSG_NEWSA, 0x2002, 0): err}
    if err == errno.EEXIST:  # and the retry after replacing fails too
        errors[(xfrm.XFRM_MSG_NEWSA, 0x2002, 1)] = errno.EEXIST
    dp._xs = StandIn(errors)
    with pytest.raises(SaInstallError) as ei:
        dp.install(pair())
    assert ei.value.reason == reason and ei.value.spi_in == 0x1001
    assert dp._xs.requests[-1][0] == xfrm.XFRM_MSG_DELSA  # the inbound state went again
    assert dp._pairs == {}


def test_reserved_spi_and_duplicates_refused(all_caps):
    dp = dp_with()
    dp._xs = StandIn()
    for spis in ((0x1001, 255), (3, 0x2002)):
        with pytest.raises(SaInstallError) as ei:
            dp.install(pair(*spis))
        assert ei.value.reason == "spi_reserved"
    assert dp._xs.requests == []  # refused before anything reached the kernel
    dp.install(pair())
    with pytest.raises(SaInstallError) as ei:
        dp.install(pair())
    assert ei.value.reason == "duplicate_spi"
    with pytest.raises(SaInstallError) as ei:
        dp_with().install(pair())
    assert ei.value.reason == "not_open"


def test_ipv6_pairs_install_ipv6_policies(all_caps):
    dp = KernelDatapath(name="k", ifname="cgw-k", inside=ipaddress.IPv6Interface("fd00::2/126"), send_udp=None,
                        on_event=print, local_address="2001:db8::2")
    sent = []
    dp._xs = StandIn()
    dp._xs.request = lambda msg: sent.append(msg)
    dp.install(pair(local_address="2001:db8::2", remote_address="2001:db8::1", local_ts="::/0", remote_ts="::/0"))
    states = [xfrm.parse_usersa(m[16:]) for m in sent if int.from_bytes(m[4:6], "little") == xfrm.XFRM_MSG_NEWSA]
    assert [(s["family"], s["src"], s["dst"]) for s in states] == [(6, "2001:db8::1", "2001:db8::2"),
                                                                  (6, "2001:db8::2", "2001:db8::1")]
    pols = [xfrm.parse_userpolicy(m[16:]) for m in sent if int.from_bytes(m[4:6], "little") == xfrm.XFRM_MSG_UPDPOLICY]
    assert len(pols) == 3 and all(p["family"] == 6 and p["if_id"] == dp.tag for p in pols)
    assert dp.mtu == 1422 and dp.mss6 == 1362  # AES-CBC/SHA-1, raw ESP over IPv6


def _in_namespace(script: str) -> dict:
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@needs_ns
def test_refusal_on_a_kernel_without_esp_says_why():
    """This kernel takes no ESP state: the real probe says so, and install refuses every
    pair with that reason (the daemon hands it to IKE) instead of failing later."""
    res = _in_namespace(r"""
import ipaddress, json
from cgwd.esp.kernel import KernelDatapath, kernel_capabilities
from cgwd.esp.xfrm import XfrmSocket
from cgwd.esp.datapath import SaInstallError
from cgwd.ipsec_sa import IpsecSaPair
dp = KernelDatapath(name="k", ifname="cgw-k", inside=ipaddress.IPv4Interface("169.254.10.2/30"), send_udp=None,
                    on_event=print, local_address="192.0.2.2")
dp._xs = XfrmSocket()
caps = kernel_capabilities()
try:
    dp.install(IpsecSaPair(0x1001, 0x2002, "aes128", "sha1", bytes(16), bytes(16), bytes(20), bytes(20),
                           local_address="192.0.2.2", remote_address="198.51.100.1"))
    out = {"raised": None}
except SaInstallError as exc:
    out = {"raised": exc.reason, "detail": str(exc)}
out["caps"] = sorted(caps.esp_allowed())
out["why"] = caps.why
print(json.dumps(out))
""")
    if res["caps"]:
        pytest.skip("this kernel has ESP (the QEMU tier covers it)")
    assert res["raised"] == "unsupported_algorithm" and "kernel probe" in res["detail"], res


@needs_ns
def test_first_open_sweeps_every_tag_of_a_crashed_run():
    """A crashed run's policies (whatever tag it had, IPv4 and IPv6, if_id or mark) are gone
    after the first open of the next run; someone else's stay. (Before, open only removed
    the tag of its own interface name, so a tag handed out differently was left behind.)"""
    res = _in_namespace(r"""
import asyncio, ipaddress, json, socket, subprocess
from cgwd.esp import xfrm
from cgwd.esp.kernel import KernelDatapath
xs = xfrm.XfrmSocket()
def add(d, if_id=None, mark=None, fam=socket.AF_INET, reqid=0x63671234):
    xs.request(xfrm.newpolicy(direction=d, tmpl_src="192.0.2.2", tmpl_dst="198.51.100.1", reqid=reqid,
                              if_id=if_id, mark=mark, inner_family=fam))
for d in (xfrm.XFRM_POLICY_OUT, xfrm.XFRM_POLICY_IN, xfrm.XFRM_POLICY_FWD):
    add(d, if_id=0x63671234)
    add(d, if_id=0x63670009, fam=socket.AF_INET6)
add(xfrm.XFRM_POLICY_OUT, mark=0x63670777)
add(xfrm.XFRM_POLICY_OUT, if_id=5, reqid=5)  # not ours
def listing():
    return [xfrm.parse_userpolicy(b) for t, b in xs.query(xfrm.dumppolicy()) if t == xfrm.XFRM_MSG_NEWPOLICY]
before = len(listing())
dp = KernelDatapath(name="k", ifname="cgw-k", inside=ipaddress.IPv4Interface("169.254.10.2/30"), send_udp=None,
                    on_event=print, local_address="192.0.2.2")
async def main():
    try:
        await dp.open()  # creating the xfrm interface fails on this kernel; the sweep came first
    except OSError:
        pass
asyncio.run(main())
after = listing()
print(json.dumps({"before": before, "after": [(p["if_id"], p["mark"]) for p in after], "swept": xfrm.TAGS.swept}))
""")
    assert res["before"] == 8 and res["swept"]
    assert res["after"] == [[5, None]], res


@needs_ns
def test_mss_clamp_follows_the_mtu():
    if shutil.which("iptables") is None:
        pytest.skip("iptables not installed")
    res = _in_namespace(r"""
import asyncio, ipaddress, json, os, subprocess
from cgwd.esp.kernel import KernelDatapath
from cgwd.ipsec_sa import IpsecSaPair
def rules():
    out = subprocess.run(["iptables-save", "-t", "mangle"], capture_output=True, text=True).stdout
    return sorted(l.split("--set-mss ")[1] for l in out.splitlines() if "cgwd-mss cgw-k" in l)
dp = KernelDatapath(name="k", ifname="cgw-k", inside=ipaddress.IPv4Interface("169.254.10.2/30"), send_udp=None,
                    on_event=print, local_address="192.0.2.2")
async def main():
    await dp._install_mss_clamp()
    first = rules()
    k = os.urandom(20)
    dp._follow(IpsecSaPair(0x1001, 0x2002, "aes128gcm16", None, k, k, local_address="192.0.2.2",
                           remote_address="198.51.100.1"))
    await dp._mss_task
    second = rules()
    await dp._remove_mss_clamp()
    print(json.dumps({"first": first, "second": second, "last": rules(), "clamp": dp.mss_clamp}))
asyncio.run(main())
""")
    assert res["first"] == ["1366", "1366"]  # before any pair: the conservative MTU 1406
    assert res["second"] == ["1406", "1406"]  # GCM, plain ESP: MTU 1446
    assert res["last"] == [] and res["clamp"].startswith("1406")
