"""Shared fixtures of the geoface_model tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on the shared 2-core machine two OpenMP threads stall badly under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
