"""The tree's own lint rules (CI runs them with the unit tier)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINT = os.path.join(ROOT, "scripts", "lint_calls.py")

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import lint_calls  # noqa: E402


def test_no_comment_inside_a_multi_line_call_in_the_tree():
    proc = subprocess.run([sys.executable, LINT], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_rule_finds_the_comment_that_swallowed_max_prefix():
    src = ("x = RoutingTable(\n"
           "    import_policy=p,  # refuses our own prefixes max_prefix=vpn.max_prefix,\n"
           "    ecmp=e)\n")
    assert lint_calls.findings(src, "d.py") == [
        "d.py:2: comment inside a call: # refuses our own prefixes max_prefix=vpn.max_prefix,"]


def test_comments_outside_calls_and_in_literals_pass():
    src = ("# top\n"
           "def f(a,\n"
           "      b):\n"
           "    return a  # trailing\n"
           "if (a and\n"
           "        b):  # after\n"
           "    pass\n")
    assert lint_calls.findings(src, "d.py") == []


def test_comment_in_a_nested_literal_inside_a_call_is_found():
    src = "f([\n    1,  # one\n])\n"
    assert lint_calls.findings(src, "d.py") == ["d.py:2: comment inside a call: # one"]
