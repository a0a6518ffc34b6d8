"""Fixtures of tests/boards."""
import pytest

from boardrun import compile_boards


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """board -> a folder holding its board.mpy."""
    return compile_boards(tmp_path_factory)
