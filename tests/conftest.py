"""Fixtures shared by the test modules.

``device``: the optimizer tests run on every device type tunebook has kernels for, as
torch's ``instantiate_device_type_tests`` does: the CPU always, CUDA when a GPU is visible
(its parameters skip cleanly otherwise, so the collected tests are the same everywhere).
"""

from __future__ import annotations

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(),
                           reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    ]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """A device type with compiled kernels: "cpu", or "cuda" where a GPU is present."""
    return request.param
