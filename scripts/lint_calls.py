#!/usr/bin/env python3
"""Lint: no comment inside a multi-line call.

A trailing comment inside a call's parentheses can swallow the arguments written after it on
the same line (a configured max_prefix once never reached the RIB that way). Comments go
above the call. Exit status 1 and one line per finding: path:line: text.

Usage: lint_calls.py [PATH ...]   (default: cgwd tests bench scripts)
"""
from __future__ import annotations

import io
import os
import sys
import tokenize

OPENERS = {"(": ")", "[": "]", "{": "}"}


def findings(source: str, path: str) -> list[str]:
    out: list[str] = []
    stack: list[bool] = []  # per open bracket: is it a call's parenthesis
    prev = None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        return [f"{path}:0: cannot tokenize: {exc}"]
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in OPENERS:
            is_call = tok.string == "(" and prev is not None and (
                prev.type == tokenize.NAME and prev.string not in _KEYWORDS
                or prev.type == tokenize.OP and prev.string in (")", "]"))
            stack.append(is_call)
        elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
            if stack:
                stack.pop()
        elif tok.type == tokenize.COMMENT and any(stack):
            out.append(f"{path}:{tok.start[0]}: comment inside a call: {tok.string.strip()}")
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                            tokenize.DEDENT):
            prev = tok
    return out


_KEYWORDS = {"if", "elif", "while", "for", "in", "not", "and", "or", "return", "yield", "assert",
             "with", "except", "lambda", "await", "del", "is", "else", "import", "from", "raise"}


def iter_files(paths: list[str]):
    for p in paths:
        if os.path.isfile(p):
            yield p
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def main(argv: list[str]) -> int:
    paths = argv or ["cgwd", "tests", "bench", "scripts"]
    bad: list[str] = []
    for path in iter_files(paths):
        with open(path, encoding="utf-8") as f:
            bad += findings(f.read(), path)
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
