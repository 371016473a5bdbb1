"""Import pyroute2 without running its package ``__init__`` up front (daemon memory).

``import pyroute2`` (or ``from pyroute2 import IPRoute``) runs pyroute2/__init__.py, which
imports every netlink family pyroute2 supports -- nftables, nl80211, ipvs, wireguard,
devlink, conntrack, plan9, NDB with sqlite3 -- about 6 MiB of code in a daemon that uses
four classes from ``pyroute2.iproute.linux``. ``install()`` registers the pyroute2 package
with its ``__init__`` not yet run:

* ``IPRoute``, ``AsyncIPRoute``, ``IPBatch``, ``NetNS`` (and ``RawIPRoute``,
  ``ChaoticIPRoute``) come from ``pyroute2.iproute.linux``;
* submodules import as usual (``from pyroute2 import config``, ``pyroute2.netlink...``);
* the first access to any other name (``from pyroute2 import NDB``, ``pyroute2.__all__``)
  runs the real ``__init__``, so every other user of pyroute2 in the process still sees
  the whole package.

It does nothing when pyroute2 is already imported or cannot be found. The daemon calls it
first thing in ``main()``; libraries and tests are unaffected unless they call it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

LIGHT_NAMES = frozenset({"IPRoute", "AsyncIPRoute", "IPBatch", "NetNS", "RawIPRoute", "ChaoticIPRoute"})


def install() -> bool:
    """Register the lazily initialised pyroute2 package; True when it was installed now."""
    if "pyroute2" in sys.modules:
        return False
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    pkg = importlib.util.module_from_spec(spec)   # module object; __init__ not executed
    lock = threading.RLock()
    state = {"full": False, "loader": None}   # loader: the thread running the real __init__
    search = list(spec.submodule_search_locations)

    def is_submodule(name: str) -> bool:
        return any(os.path.isdir(os.path.join(d, name)) or os.path.isfile(os.path.join(d, name + ".py"))
                   for d in search)

    def full_load() -> None:
        with lock:   # another thread asking meanwhile waits here for the whole package
            if state["full"] or state["loader"] is not None:
                return
            state["loader"] = threading.get_ident()
            try:
                spec.loader.exec_module(pkg)   # the real __init__, into the same module object
                state["full"] = True
            finally:
                state["loader"] = None

    def __getattr__(name: str):
        # Submodules: let the import system load them (``from pyroute2 import config`` asks
        # hasattr() first); and no recursion while the real __init__ runs.
        if state["loader"] == threading.get_ident() or is_submodule(name):
            raise AttributeError(name)
        if name in LIGHT_NAMES and not state["full"]:
            try:
                from pyroute2.iproute import linux
                return getattr(linux, name)
            except (ImportError, AttributeError):
                pass  # another pyroute2 layout: fall back to the whole package
        if not state["full"]:
            full_load()
            if name in pkg.__dict__:
                return pkg.__dict__[name]
        raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")

    pkg.__getattr__ = __getattr__
    sys.modules["pyroute2"] = pkg
    return True
