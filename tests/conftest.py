"""Shared fixtures (paths and fake outputs are in tests/support.py)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Small tensors: intra-op threads only add overhead, and on a busy 2-core machine
    two OpenMP threads spinning on each other made tiny convolutions ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
