import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The training tests run tiny models: one thread is faster than two fighting over tiny
    kernels, and leaves the other core to whatever else runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
