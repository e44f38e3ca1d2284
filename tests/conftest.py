"""Shared fixtures for fastbp's tests (helpers live in helpers.py, the reference in naive.py)."""
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
try:
    import fastbp
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, str(ROOT))
    import fastbp


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change the thread count put it back."""
    before = fastbp.get_num_threads()
    yield
    if fastbp.get_num_threads() != before:
        fastbp.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
