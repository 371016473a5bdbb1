"""Fixtures that build the lab topology (cgwd.lab) for interop tests, and always tear it down.

`lab_factory(**spec)` builds a Lab with the given LabSpec fields (proposals, lifetimes, DPD,
NAT, number of tunnels, ...). Every lab gets a unique namespace prefix (``$CGWD_LAB_PREFIX``,
default ``it``, then the pid and a counter: runs side by side keep to their own namespaces);
after the test the lab is removed even when the test failed, and the fixture checks nothing
was left behind.
"""

from __future__ import annotations

import itertools
import os

import pytest

from cgwd.lab.cli import import_config, start_cgwd
from cgwd.lab.topology import AwsTunnelSpec, Lab, LabSpec
from labenv import interop_skip_reason, tear_down_labs

_counter = itertools.count(1)

@pytest.fixture
def lab_factory(request):
    reason = interop_skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(*, aws: list[AwsTunnelSpec] | None = None, up: bool = True, **kw) -> Lab:
        prefix = kw.pop("prefix", f"{os.environ.get('CGWD_LAB_PREFIX', 'it')}{os.getpid() % 1000}x{next(_counter)}")
        spec = LabSpec(prefix=prefix, aws=list(aws or []), **kw)
        lab = Lab(spec)
        labs.append(lab)
        if up:
            lab.up()
        return lab

    yield make
    tear_down_labs(request, labs)

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)

@pytest.fixture
def cgwd_in_lab():
    """Start cgwd in a lab's customer namespace from the lab's imported AWS XML."""

    def start(lab: Lab, *, config: str | None = None):
        config = config or import_config(lab)
        proc = start_cgwd(lab, config)
        return proc

    return start

