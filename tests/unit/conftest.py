import os

import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")

from unit_config import BASE, PSK1, PSK2  # noqa: F401 - fixtures below use them; tests import unit_config


@pytest.fixture
def data_path():
    return lambda name: os.path.join(DATA, name)


@pytest.fixture
def write_cfg(tmp_path):
    def w(text, name="cgwd.toml", mode=0o600):
        p = tmp_path / name
        p.write_text(text)
        os.chmod(p, mode)
        return str(p)

    return w
