"""Shared fixtures: execution modes, and one digits ImageFolder for the whole session."""
import mindspore as ms
import pytest

from res2net_ms.data import write_digits_imagefolder


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn digits as 32 px RGB PNGs: 1437 train / 360 val images, classes 0..9."""
    return write_digits_imagefolder(str(tmp_path_factory.mktemp("data") / "digits"), size=32)


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
