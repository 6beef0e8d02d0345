"""tokens_to_grid: token activations to the (B, N, h, w) grid."""

from __future__ import annotations

import pytest
import torch

from captum_sfam import (
    tokens_to_grid,
)


def test_tokens_to_grid_checks():
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(1)(torch.zeros(1, 1 + 6, 4))
    assert tokens_to_grid(0, (2, 3))(torch.zeros(1, 6, 4)).shape == (1, 4, 2, 3)
    with pytest.raises(ValueError, match="grid_size"):
        tokens_to_grid(0, (2, 2))(torch.zeros(1, 6, 4))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        tokens_to_grid(-1)
