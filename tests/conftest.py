"""Shared fixtures: tiny generated audio, limited threads so the suite stays fast on 2 cores."""
import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
