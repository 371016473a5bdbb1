"""The shape of `cgwctl status --json` from a running daemon, against a recorded golden list.

Recorded before the daemon was split into rooms (process, tunnel, parts): every key path the
old daemon reported must still be reported, so moving code cannot silently drop a field an
operator's tooling reads. New fields may be added (list them in the golden file when they are
part of the documented interface). Record again with CGWD_RECORD_STATUS_KEYS=1.
"""

from __future__ import annotations

import json
import os

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for

pytestmark = pytest.mark.interop

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "status_keys.json")


def key_paths(obj, prefix: str = "") -> set[str]:
    """Every key path of a JSON value; list items collapse to ``[]``; maps keyed by data
    (drops, counters) keep only their own path."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            if p.rsplit(".", 1)[-1] in _DATA_KEYED:
                continue
            out |= key_paths(v, p)
    elif isinstance(obj, list):
        for v in obj:
            out |= key_paths(v, prefix + "[]")
    return out


_DATA_KEYED = {"drops", "counters", "process"}

LAN_NEIGHBOR = """
[[lan_neighbor]]
name = "core1"
address = "{router}"
local_address = "10.200.0.1"
remote_asn = 65010
import = ["10.201.0.0/16 le 24"]
"""


def test_key_paths_collapse_lists_and_data_keyed_maps():
    got = key_paths({"a": [{"b": 1}, {"c": 2}], "drops": {"x": 1}})
    assert got == {"a", "a[].b", "a[].c", "drops"}


def test_status_json_keeps_every_recorded_key(lab_factory):
    lab = lab_factory()
    config = import_config(lab)
    with open(config, "a") as f:      # a LAN neighbor (no router answers: its keys are there all the same)
        f.write(LAN_NEIGHBOR.format(router=lab.spec.onprem_host))
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 45, interval=0.3, what="tunnels up")
    got = key_paths(cgwctl_status(lab, as_json=True))
    if os.environ.get("CGWD_RECORD_STATUS_KEYS"):
        with open(GOLDEN, "w") as f:
            json.dump(sorted(got), f, indent=1)
            f.write("\n")
    with open(GOLDEN) as f:
        want = set(json.load(f))
    assert not want - got, f"status lost keys: {sorted(want - got)}"
