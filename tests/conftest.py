"""Shared fixtures (paths and fake outputs are in tests/support.py)."""
import pytest
import torch

from synthetic_coco import make_dataset


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Small tensors: intra-op threads only add overhead, and on a busy 2-core machine
    two OpenMP threads spinning on each other made tiny convolutions ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Ten synthetic validation images per task: {"det" | "pose": (ann_file, image_dir)}.
    Shared by every test file: read them, never write into them."""
    root = tmp_path_factory.mktemp("synthetic")
    return {task: make_dataset(root, task, "val", 10) for task in ("det", "pose")}
