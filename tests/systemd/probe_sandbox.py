"""Tries, from inside a unit, what each of cgwd.service's sandboxing directives forbids, and
what cgwd needs. Writes {check: [held, detail]} as JSON to argv[1].

The test runs it twice: in a twin of cgwd.service (the same [Service] sandbox, this script as
ExecStart) and in a plain unit without any sandbox. A restriction check is "held" when the
forbidden thing failed the way the directive makes it fail; each one is chosen so that it
does NOT fail that way without the directive (the plain run shows it), so every check can
fail. "needs_*" checks are what cgwd's work requires (TUN, sysctls of its interfaces, raw and
netlink sockets, a privileged port): held means it still works under the sandbox.
Standard library only; every probe is harmless when it is allowed (it restores what it set).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
results: dict[str, list] = {}

# x86_64 system call numbers
NR = {"setuid": 105, "setrlimit": 160, "getrlimit": 97, "mount": 165, "perf_event_open": 298, "iopl": 172,
      "modify_ldt": 154, "clock_settime": 227, "adjtimex": 159, "ustat": 136, "unshare": 272, "personality": 135,
      "sched_setscheduler": 144, "sethostname": 170}
CLONE_NEWUSER = 0x10000000


def record(name: str, held: bool, detail: str) -> None:
    results[name] = [bool(held), detail]


def syscall(name: str, *args) -> tuple[int, int]:
    """(return value, errno)"""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, (ctypes.get_errno() if r == -1 else 0)


def ename(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "succeeded"


def seccomp_denied(check: str, name: str, *args) -> int:
    r, err = syscall(name, *args)
    record(check, err == errno.EPERM, f"{name}() -> {ename(err)}")
    return r


def try_write(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return "written"
    except OSError as exc:
        return ename(exc.errno)


def listing(path: str):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return ename(exc.errno)


def mounts() -> dict[str, str]:
    """mount point -> mount options + super options, from /proc/self/mountinfo"""
    out = {}
    for line in open("/proc/self/mountinfo"):
        pre, _, post = line.partition(" - ")
        f = pre.split()
        out[f[4]] = f[5] + " " + post.split()[-1]
    return out


def main() -> None:
    out = sys.argv[1]
    rundir = os.path.dirname(out)
    # --- SystemCallFilter=@system-service ~@privileged @resources (and ProtectClock's ~@clock),
    # SystemCallErrorNumber=EPERM: each call below succeeds or fails otherwise than EPERM unfiltered
    seccomp_denied("seccomp @privileged: setuid(0)", "setuid", 0)
    lim = ctypes.create_string_buffer(16)
    syscall("getrlimit", 7, lim)
    seccomp_denied("seccomp @resources: setrlimit(NOFILE, unchanged)", "setrlimit", 7, lim)
    seccomp_denied("seccomp @mount: mount() on a missing path", "mount", ctypes.c_char_p(b"none"),
                   ctypes.c_char_p(b"/nonexistent-sdprobe"), ctypes.c_char_p(b"tmpfs"), 0, 0)
    seccomp_denied("seccomp @debug: perf_event_open(no attributes)", "perf_event_open", 0, 0, -1, -1, 0)
    seccomp_denied("seccomp @raw-io: iopl(0)", "iopl", 0)
    ldt = ctypes.create_string_buffer(16)
    seccomp_denied("seccomp @cpu-emulation: modify_ldt(read)", "modify_ldt", 0, ldt, 16)
    seccomp_denied("seccomp @obsolete: ustat()", "ustat", 0, ctypes.create_string_buffer(64))
    ts = ctypes.create_string_buffer(struct.pack("qq", 0, 0))
    seccomp_denied("ProtectClock: clock_settime(MONOTONIC)", "clock_settime", 1, ts)
    seccomp_denied("ProtectClock: adjtimex(read only)", "adjtimex", ctypes.create_string_buffer(256))
    # --- RestrictNamespaces=yes: a user namespace needs no privilege otherwise (in a child:
    # the probe itself keeps its namespaces)
    pid = os.fork()
    if pid == 0:
        os._exit(syscall("unshare", CLONE_NEWUSER)[1])
    err = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    record("RestrictNamespaces: unshare(CLONE_NEWUSER)", err == errno.EPERM, f"unshare -> {ename(err)}")
    # --- LockPersonality=yes
    r, err = syscall("personality", 0x0008)  # PER_LINUX32
    if err == 0:
        syscall("personality", r)
    record("LockPersonality: personality(PER_LINUX32)", err == errno.EPERM, f"personality -> {ename(err)}")
    # --- RestrictRealtime=yes (and no CAP_SYS_NICE)
    param = ctypes.create_string_buffer(struct.pack("i", 1))
    r, err = syscall("sched_setscheduler", 0, 1, param)  # SCHED_FIFO
    if err == 0:
        syscall("sched_setscheduler", 0, 0, ctypes.create_string_buffer(struct.pack("i", 0)))
    record("RestrictRealtime: sched_setscheduler(SCHED_FIFO)", err == errno.EPERM, f"-> {ename(err)}")
    # --- ProtectHostname=yes (and no CAP_SYS_ADMIN): set the same name again
    name = socket.gethostname().encode()
    r, err = syscall("sethostname", ctypes.c_char_p(name), len(name))
    record("ProtectHostname: sethostname(unchanged)", err == errno.EPERM, f"sethostname -> {ename(err)}")
    # --- MemoryDenyWriteExecute=yes
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
        record("MemoryDenyWriteExecute: mmap(W|X)", False, "mmap(PROT_WRITE|PROT_EXEC) succeeded")
    except OSError as exc:
        record("MemoryDenyWriteExecute: mmap(W|X)", exc.errno == errno.EPERM, f"mmap -> {ename(exc.errno)}")
    # --- RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
    for fam, fname, typ in ((socket.AF_PACKET, "AF_PACKET", socket.SOCK_DGRAM),):
        try:
            socket.socket(fam, typ).close()
            record(f"RestrictAddressFamilies: {fname}", False, "socket() succeeded")
        except OSError as exc:
            record(f"RestrictAddressFamilies: {fname}", exc.errno == errno.EAFNOSUPPORT, f"-> {ename(exc.errno)}")
    # --- ProtectSystem=strict
    for path in ("/usr/sdprobe", "/etc/sdprobe", "/var/lib/sdprobe", "/opt/cgwd/sdprobe"):
        r = try_write(path)
        record(f"ProtectSystem: write {os.path.dirname(path)}", r == "EROFS", r)
    # --- ProtectHome=yes, PrivateTmp=yes: markers the test left there
    for check, path in (("ProtectHome: /root", "/root"), ("ProtectHome: /home", "/home"),
                        ("PrivateTmp: /tmp", "/tmp"), ("PrivateTmp: /var/tmp", "/var/tmp")):
        seen = listing(path)
        record(check, not (isinstance(seen, list) and any(n.startswith("sdprobe-marker") for n in seen)),
               f"{path} lists {seen}")
    # --- ProtectControlGroups=yes
    try:
        os.mkdir("/sys/fs/cgroup/sdprobe")
        os.rmdir("/sys/fs/cgroup/sdprobe")
        record("ProtectControlGroups: mkdir in /sys/fs/cgroup", False, "created")
    except OSError as exc:
        record("ProtectControlGroups: mkdir in /sys/fs/cgroup", exc.errno == errno.EROFS, ename(exc.errno))
    # --- ProtectKernelTunables=yes: write kernel.domainname unchanged
    try:
        cur = open("/proc/sys/kernel/domainname").read()
        with open("/proc/sys/kernel/domainname", "w") as f:
            f.write(cur)
        record("ProtectKernelTunables: write /proc/sys/kernel", False, "written")
    except OSError as exc:
        record("ProtectKernelTunables: write /proc/sys/kernel", exc.errno == errno.EROFS, ename(exc.errno))
    m = mounts()
    # --- ProtectKernelModules=yes: the module directory (the test made one) is inaccessible
    seen = listing("/usr/lib/modules")
    record("ProtectKernelModules: /usr/lib/modules", not (isinstance(seen, list) and "sdprobe-marker" in seen),
           f"/usr/lib/modules lists {seen}")
    # --- ProtectKernelLogs=yes: /proc/kmsg is covered
    record("ProtectKernelLogs: /proc/kmsg covered", "/proc/kmsg" in m, f"/proc/kmsg mount: {m.get('/proc/kmsg')}")
    # --- ProtectProc=invisible
    record("ProtectProc: hidepid=invisible", "hidepid=invisible" in m.get("/proc", ""), f"/proc: {m.get('/proc')}")
    # --- PrivateDevices=yes, DevicePolicy=closed, DeviceAllow=/dev/net/tun rw
    devs = listing("/dev")
    record("PrivateDevices: own /dev (the container's /dev marker hidden)",
           isinstance(devs, list) and "sdprobe-marker" not in devs, f"/dev: {devs}")
    # the test made a character device outside the allow list (c 10:229, /dev/fuse's numbers) and
    # the twin binds it into its /dev: the cgroup's BPF device filter must refuse it
    try:
        os.close(os.open("/dev/sdprobe-fuse", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        record("DevicePolicy: a device outside DeviceAllow", False, "opened /dev/sdprobe-fuse")
    except OSError as exc:
        record("DevicePolicy: a device outside DeviceAllow", exc.errno == errno.EPERM, f"-> {ename(exc.errno)}")
    # --- NoNewPrivileges=yes, CapabilityBoundingSet=, AmbientCapabilities=
    st = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
    st = {k: v.strip() for k, v in st.items()}
    record("NoNewPrivileges", st.get("NoNewPrivs") == "1", f"NoNewPrivs: {st.get('NoNewPrivs')}")
    want = (1 << 10) | (1 << 12) | (1 << 13)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW
    caps = {k: int(st.get(k, "0"), 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh")}
    record("CapabilityBoundingSet: NET_ADMIN NET_RAW NET_BIND_SERVICE only",
           caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == want and caps["CapAmb"] == caps["CapInh"] == 0,
           " ".join(f"{k}={v:#x}" for k, v in caps.items()))
    record("seccomp filter mode", st.get("Seccomp") == "2", f"Seccomp: {st.get('Seccomp')}, "
           f"filters: {st.get('Seccomp_filters')}")
    # --- RestrictSUIDSGID=yes, UMask=0077
    f = os.path.join(rundir, "suid")
    open(f, "w").close()
    mode = os.stat(f).st_mode & 0o777
    record("UMask: 0077", mode == 0o600, f"a new file is {mode:04o}")
    try:
        os.chmod(f, 0o4700)
        record("RestrictSUIDSGID: chmod u+s", False, "chmod u+s succeeded")
    except OSError as exc:
        record("RestrictSUIDSGID: chmod u+s", exc.errno == errno.EPERM, f"chmod u+s -> {ename(exc.errno)}")
    os.unlink(f)
    # --- what cgwd's work needs, under all of the above
    record("needs_runtime_directory", try_write(os.path.join(rundir, "w")) == "written", f"{rundir} writable")
    tun_name = None
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        ifr = struct.pack("16sH", b"sdprobe%d", 0x0001 | 0x1000)  # IFF_TUN | IFF_NO_PI
        tun_name = fcntl.ioctl(fd, 0x400454CA, ifr)[:16].rstrip(b"\0").decode()  # TUNSETIFF
        record("needs_tun", True, f"created TUN {tun_name}")
        try:
            with open(f"/proc/sys/net/ipv4/conf/{tun_name}/rp_filter", "w") as fh:
                fh.write("2")
            record("needs_sysctl_of_own_interface", True, f"net.ipv4.conf.{tun_name}.rp_filter = 2")
        except OSError as exc:
            record("needs_sysctl_of_own_interface", False, f"rp_filter: {ename(exc.errno)}")
        os.close(fd)
    except OSError as exc:
        record("needs_tun", False, f"/dev/net/tun: {ename(exc.errno)}")
    for check, fam, typ, proto in (("needs_netlink", socket.AF_NETLINK, socket.SOCK_RAW, 0),
                                   ("needs_raw_esp_socket", socket.AF_INET, socket.SOCK_RAW, 50),
                                   ("needs_udp6", socket.AF_INET6, socket.SOCK_DGRAM, 0)):
        try:
            socket.socket(fam, typ, proto).close()
            record(check, True, "allowed")
        except OSError as exc:
            record(check, False, ename(exc.errno))
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 499))
        s.close()
        record("needs_privileged_port", True, "bound 127.0.0.1:499")
    except OSError as exc:
        record("needs_privileged_port", False, ename(exc.errno))
    with open(out + ".tmp", "w") as fh:
        json.dump(results, fh)
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    main()
