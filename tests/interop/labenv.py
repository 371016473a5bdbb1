"""What the interop tier needs from the machine (a module of its own: `from conftest import`
in a test finds whichever tier's conftest pytest loaded last)."""

from __future__ import annotations

import os
import shutil

from cgwd.lab.bird import bird_available
from cgwd.lab.strongswan import charon_available


def interop_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "interop tests need root (network namespaces); run them as root"
    for tool in ("ip", "iptables", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return charon_available() or bird_available()


def tear_down_labs(request, labs: list) -> None:
    """A lab fixture's teardown: each lab's logs printed (last 40 lines) when the test failed,
    every lab taken down, and a failure if any left a namespace, link or process behind."""
    from cgwd.lab.topology import leftovers
    failed = getattr(getattr(request.node, "rep_call", None), "failed", False)
    problems = []
    for lab in labs:
        if failed:
            for root, _dirs, files in os.walk(lab.workdir):
                for name in files:
                    if name.endswith(".log"):
                        path = os.path.join(root, name)
                        with open(path, errors="replace") as f:
                            tail = f.readlines()[-40:]
                        print(f"----- {path} (last {len(tail)} lines)\n" + "".join(tail))
        lab.down()
        left = leftovers(lab.spec.prefix)
        if left:
            problems.append(f"lab {lab.spec.prefix} left: {left}")
    assert not problems, problems
