"""The test tree collects as one (`pytest tests`, what CI runs, or the tiers in any order on
one command line): test modules have unique basenames across tiers (pytest's default import
mode keys them by basename), and no test imports from a conftest."""

from __future__ import annotations

import collections
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_test_module_basenames_are_unique_across_tiers():
    seen = collections.defaultdict(list)
    for root, dirs, files in os.walk(TESTS):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for f in files:
            if f.endswith(".py") and f not in ("conftest.py", "__init__.py"):
                seen[f].append(os.path.relpath(os.path.join(root, f), TESTS))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


def test_no_test_imports_from_conftest():
    # `from conftest import X` binds to whichever tier's conftest pytest imported last, so it
    # breaks with the order of the tiers on the command line: shared helpers live in modules
    # with names of their own (tests/unit/unit_config.py, tests/interop/labenv.py)
    bad = []
    for root, dirs, files in os.walk(TESTS):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for f in files:
            if f.endswith(".py") and f != os.path.basename(__file__):
                with open(os.path.join(root, f)) as fh:
                    if any(line.lstrip().startswith("from conftest import") for line in fh):
                        bad.append(os.path.relpath(os.path.join(root, f), TESTS))
    assert not bad
