"""Shared fixtures: one digits ImageFolder for the whole test session."""
import pytest

from res2net_ms.data import write_digits_imagefolder


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn digits as 32 px RGB PNGs: 1437 train / 360 val images, classes 0..9."""
    return write_digits_imagefolder(str(tmp_path_factory.mktemp("data") / "digits"), size=32)
