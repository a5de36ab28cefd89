import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (the README's test command): one worker per core, each single-threaded, so that no worker's
    # small parallel regions wait on a thread the other worker is running (subprocesses inherit the setting).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; must be set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed():
    """A fresh seed every run (printed on failure), so tests never depend on one lucky draw."""
    value = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(value)
    return value
