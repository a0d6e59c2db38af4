"""Execution-mode fixtures: import them into a test module to use them."""
import mindspore as ms
import pytest


@pytest.fixture
def graph_mode():
    """GRAPH_MODE with jit_level O2, as training runs it."""
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def pynative_mode():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
