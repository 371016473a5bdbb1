"""The fuzz tier's fixture: an allocation guard (helpers live in fuzzlib.py)."""

import tracemalloc

import pytest
from fuzzlib import AllocGuard


@pytest.fixture
def alloc_guard():
    tracemalloc.start()
    g = AllocGuard()
    try:
        yield g
    finally:
        tracemalloc.stop()
        print(f"inputs tried: {g.tried}, worst peak allocation {g.worst} bytes")
