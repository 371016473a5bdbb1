"""cgwd.pyroute2_lite: the daemon imports only the pyroute2 classes it uses.

Each check runs in a fresh interpreter: what matters is which modules get imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_py(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_light_import_gives_the_classes_without_the_whole_package():
    r = run_py("""
        import json, sys
        from cgwd import pyroute2_lite
        installed = pyroute2_lite.install()
        from pyroute2 import AsyncIPRoute, IPBatch, IPRoute, NetNS
        import pyroute2.iproute.linux as linux
        same = all(a is b for a, b in ((IPRoute, linux.IPRoute), (AsyncIPRoute, linux.AsyncIPRoute),
                                       (IPBatch, linux.IPBatch), (NetNS, linux.NetNS)))
        print(json.dumps({"installed": installed, "same": same,
                          "ndb": "pyroute2.ndb.main" in sys.modules,
                          "nftables": "pyroute2.netlink.nfnetlink.nftsocket" in sys.modules,
                          "sqlite3": "sqlite3" in sys.modules,
                          "n": sum(1 for m in sys.modules if m.startswith("pyroute2"))}))
    """)
    assert r["installed"] and r["same"]
    assert not r["ndb"] and not r["nftables"] and not r["sqlite3"]


def test_other_names_load_the_real_package_on_first_use():
    r = run_py("""
        import json, sys
        from cgwd import pyroute2_lite
        pyroute2_lite.install()
        from pyroute2 import IPRoute
        light = sum(1 for m in sys.modules if m.startswith("pyroute2"))
        from pyroute2 import NDB            # not one of the light names: the real __init__ runs
        import pyroute2
        from pyroute2 import config          # submodules still import normally
        try:
            pyroute2.no_such_name
            missing = "no error"
        except AttributeError as e:
            missing = str(e)
        print(json.dumps({"light": light, "full": sum(1 for m in sys.modules if m.startswith("pyroute2")),
                          "ndb_module": NDB.__module__, "version": pyroute2.__version__,
                          "all": len(pyroute2.__all__), "same": pyroute2.IPRoute is IPRoute,
                          "config": config.__name__, "missing": missing}))
    """)
    assert r["full"] > r["light"]
    assert r["ndb_module"].startswith("pyroute2.ndb")
    assert r["version"] and r["all"] > 10 and r["same"]
    assert r["config"] == "pyroute2.config"
    assert "no_such_name" in r["missing"]


def test_does_nothing_when_pyroute2_is_already_imported():
    r = run_py("""
        import json, sys
        import pyroute2
        from cgwd import pyroute2_lite
        print(json.dumps({"installed": pyroute2_lite.install(), "ndb": "pyroute2.ndb.main" in sys.modules}))
    """)
    assert r == {"installed": False, "ndb": True}


def test_daemon_main_installs_it_before_running():
    r = run_py("""
        import asyncio, json, sys
        import cgwd.daemon as d
        seen = {}
        def fake_run(coro):
            coro.close()
            mod = sys.modules.get("pyroute2")
            seen["pyroute2_registered"] = mod is not None
            seen["init_ran"] = mod is not None and "NDB" in mod.__dict__
            return 0
        d.asyncio.run = fake_run
        rc = d.main(["--config", "/nonexistent.toml"])
        print(json.dumps({"rc": rc, **seen}))
    """)
    assert r == {"rc": 0, "pyroute2_registered": True, "init_ran": False}
