"""What the interop tier needs from the machine (a module of its own: `from conftest import`
in a test finds whichever tier's conftest pytest loaded last)."""

from __future__ import annotations

import os
import shutil
import time

from cgwd.lab.bird import bird_available
from cgwd.lab.cli import import_config
from cgwd.lab.strongswan import charon_available


def lan_config(lab, *, remote_asn: int, password: str, hold_time: int = 30, extra: str = "",
               address: str | None = None, local_address: str = "10.200.0.1",
               import_filter: str = "10.201.0.0/16 le 24") -> str:
    """The lab's config imported from AWS's download, plus one [[lan_neighbor]] "core1": the
    on-prem host (``address``; default its IPv4 address) as the router, cgwd on
    ``local_address``, the ``import_filter`` and the MD5 ``password``; ``extra``: more lines of
    that table. Returns the config's path."""
    path = import_config(lab)
    with open(path, "a") as f:
        f.write(f"""
[[lan_neighbor]]
name = "core1"
address = "{address or lab.spec.onprem_host}"
local_address = "{local_address}"
remote_asn = {remote_asn}
hold_time = {hold_time}
password = "{password}"
import = ["{import_filter}"]
{extra}""")
    return path


def lan_neighbor(lab) -> dict:
    """The first LAN neighbor of cgwd's status (JSON), or {}."""
    from cgwd.lab.cli import cgwctl_status
    return ((cgwctl_status(lab, as_json=True).get("lan") or {}).get("neighbors") or [{}])[0]


def silence_router_bfd(lab) -> tuple[float, dict]:
    """Drop the on-prem router's BFD packets (UDP 3784, IPv4 and IPv6) in its namespace and
    wait for cgwd to declare BFD Down and close BGP: (seconds from the drop to cgwd's teardown,
    the neighbor's status then). ``unsilence_router_bfd`` lifts the drop."""
    from cgwd.lab.netns import wait_for
    lab.onprem.run(["nft", "add table inet bfdtest"], check=True)
    lab.onprem.run(["nft", "add chain inet bfdtest out { type filter hook output priority 0 ; }"], check=True)
    t0 = time.time()
    lab.onprem.run(["nft", "add rule inet bfdtest out udp dport 3784 drop"], check=True)
    wait_for(lambda: lan_neighbor(lab).get("bfd", {}).get("bgp_teardowns") == 1, 10, interval=0.1,
             what="cgwd to declare BFD Down and close BGP")
    n = lan_neighbor(lab)
    return n["bfd"]["last_teardown_at"] - t0, n


def unsilence_router_bfd(lab) -> None:
    lab.onprem.run(["nft", "delete table inet bfdtest"], check=True)


def interop_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "interop tests need root (network namespaces); run them as root"
    for tool in ("ip", "iptables", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return charon_available() or bird_available()


FAILED_LOGS = os.environ.get("CGWD_FAILED_LOGS", "/tmp/cgwd-failed-logs")  # a failed test's lab logs, whole


def tear_down_labs(request, labs: list) -> None:
    """A lab fixture's teardown: each lab's logs printed (last 40 lines) and kept whole under
    FAILED_LOGS when the test failed,
    every lab taken down, and a failure if any left a namespace, link or process behind."""
    from cgwd.lab.topology import leftovers
    failed = getattr(getattr(request.node, "rep_call", None), "failed", False)
    problems = []
    for lab in labs:
        if failed:
            keep = os.path.join(FAILED_LOGS, os.path.basename(lab.workdir.rstrip("/")))
            for root, _dirs, files in os.walk(lab.workdir):
                for name in files:
                    if name.endswith(".log"):
                        path = os.path.join(root, name)
                        with open(path, errors="replace") as f:
                            tail = f.readlines()[-40:]
                        print(f"----- {path} (last {len(tail)} lines)\n" + "".join(tail))
                        dest = os.path.join(keep, os.path.relpath(path, lab.workdir))
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        shutil.copyfile(path, dest)
            print(f"----- the whole logs of lab {lab.spec.prefix} are kept in {keep}")
        lab.down()
        left = leftovers(lab.spec.prefix)
        if left:
            problems.append(f"lab {lab.spec.prefix} left: {left}")
    assert not problems, problems
