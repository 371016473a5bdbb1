"""[[lan_neighbor]] bfd, bfd_interval_ms, bfd_multiplier: defaults, range errors, in-place reload."""
import pytest

from cgwd.config import parse_config
from cgwd.lan.config import LAN_IN_PLACE
from test_lan_config import errors, neighbor


def test_defaults_off_300_ms_x3():
    (n,) = parse_config(neighbor()).lan_neighbors
    assert (n.bfd, n.bfd_interval_ms, n.bfd_multiplier) == (False, 300, 3)


def test_values_are_taken():
    (n,) = parse_config(neighbor(bfd="true", bfd_interval_ms="50", bfd_multiplier="1")).lan_neighbors
    assert (n.bfd, n.bfd_interval_ms, n.bfd_multiplier) == (True, 50, 1)


@pytest.mark.parametrize("kw, key, words", [
    ({"bfd": '"yes"'}, "bfd", "must be true or false"),
    ({"bfd_interval_ms": "49"}, "bfd_interval_ms", "between 50 and 10000 ms"),
    ({"bfd_interval_ms": "10001"}, "bfd_interval_ms", "between 50 and 10000 ms"),
    ({"bfd_interval_ms": "0.3"}, "bfd_interval_ms", "must be an integer"),
    ({"bfd_multiplier": "0"}, "bfd_multiplier", "between 1 and 255"),
    ({"bfd_multiplier": "256"}, "bfd_multiplier", "between 1 and 255"),
])
def test_bad_values_are_specific_errors(kw, key, words):
    errs = errors(neighbor(**kw))
    assert any("lan_neighbor[0]" in e and key in e and words in e for e in errs), errs


def test_bfd_changes_apply_in_place():
    (old,) = parse_config(neighbor()).lan_neighbors
    (new,) = parse_config(neighbor(bfd="true", bfd_interval_ms="100", bfd_multiplier="5")).lan_neighbors
    ch = old.changes(new)
    assert set(ch.in_place) == {"bfd", "bfd_interval_ms", "bfd_multiplier"} and not ch.restart
    assert {"bfd", "bfd_interval_ms", "bfd_multiplier"} <= LAN_IN_PLACE
