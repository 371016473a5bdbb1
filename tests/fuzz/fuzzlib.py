"""Shared pieces of the fuzz tier: the committed corpus, a mutation strategy, an allocation bound.

The corpus (tests/fuzz/corpus/{ike,esp,ip,bgp}/) was captured from a real lab run by
tests/fuzz/capture_corpus.py (cgwd against strongSwan + BIRD). Hypothesis picks a seed from it
and applies a few structured mutations (bit flips, byte sets, truncation, insertion,
duplication, length fields set to extremes); it shrinks failures to a minimal example.

Bounded for CI: every target runs CGWD_FUZZ_EXAMPLES examples (default 300) without a
deadline; set CGWD_FUZZ_EXAMPLES=20000 for a longer local campaign.
"""

from __future__ import annotations

import os
import tracemalloc

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
EXAMPLES = int(os.environ.get("CGWD_FUZZ_EXAMPLES", "300"))
# What one input may allocate at peak while being handled (inputs are < 64 KiB).
ALLOC_LIMIT = 4 << 20

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def corpus(kind: str) -> list[bytes]:
    d = os.path.join(CORPUS, kind)
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out.append(f.read())
    assert out, f"empty corpus {d}: run tests/fuzz/capture_corpus.py"
    return out


@st.composite
def mutated(draw, seeds: list[bytes], max_ops: int = 4) -> bytes:
    """A corpus seed with 0..max_ops structured mutations."""
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.integers(0, 6))
        n = len(b)
        if op == 0 and n:  # flip one bit
            i = draw(st.integers(0, n - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:  # set one byte
            b[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif op == 2:  # truncate
            del b[draw(st.integers(0, n)):]
        elif op == 3:  # insert random bytes
            i = draw(st.integers(0, n))
            b[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == 4 and n:  # duplicate a slice
            i = draw(st.integers(0, n - 1))
            j = draw(st.integers(i, min(n, i + 128)))
            b[j:j] = b[i:j]
        elif op == 5 and n >= 2:  # a 16-bit field (lengths) set to an extreme
            i = draw(st.integers(0, n - 2))
            b[i:i + 2] = draw(st.sampled_from([0, 1, 4, 0x7FFF, 0xFFFF])).to_bytes(2, "big")
        elif op == 6 and n >= 4:  # a 32-bit field (lengths, SPIs, message ids) set to an extreme
            i = draw(st.integers(0, n - 4))
            b[i:i + 4] = draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF])).to_bytes(4, "big")
    return bytes(b)


def inputs(seeds: list[bytes]):
    """Mostly mutated seeds, some pure random bytes."""
    return st.one_of(mutated(seeds), mutated(seeds), mutated(seeds), st.binary(max_size=2048))


class AllocGuard:
    """Peak Python allocation while handling one input stays under ALLOC_LIMIT."""

    def __init__(self) -> None:
        self.tried = 0
        self.worst = 0

    def __enter__(self):
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        self.tried += 1
        peak = tracemalloc.get_traced_memory()[1] - self.base
        self.worst = max(self.worst, peak)
        if exc[0] is None:
            assert peak < ALLOC_LIMIT, f"handling one input allocated {peak} bytes at peak"
        return False
