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
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(1)(torch.zeros(1, 1, 4))  # no patch token at all
    with pytest.raises(ValueError, match="token activations"):
        tokens_to_grid(1)(torch.zeros(1, 5, 2, 2))


@pytest.mark.parametrize("prefix, grid", [(0, (2, 3)), (1, None), (5, (3, 2))])
def test_tokens_to_grid_places_each_patch_token_in_row_major_order(prefix, grid):
    batch, channels = 2, 4
    h, w = grid or (3, 3)
    tokens = torch.randn(batch, prefix + h * w, channels)
    out = tokens_to_grid(prefix, grid)(tokens)
    assert out.shape == (batch, channels, h, w)
    for b in range(batch):
        for i in range(h):
            for j in range(w):
                torch.testing.assert_close(
                    out[b, :, i, j], tokens[b, prefix + i * w + j], rtol=0, atol=0
                )
