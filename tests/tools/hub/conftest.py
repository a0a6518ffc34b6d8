"""The hub fixtures (tests/hubfixture.py) for this folder, and a module-scoped hub for the slower files."""
import pytest

from hubfixture import LocalHub


@pytest.fixture(scope="module")
def mhub(tmp_path_factory):
    h = LocalHub(tmp_path_factory.mktemp("hub")).start()
    yield h
    h.stop()
