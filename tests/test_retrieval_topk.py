"""exact_top_k and nearest_neighbours: the exact search a retrieval run does."""

from __future__ import annotations

import pytest
import torch

from captum_sfam.metrics import nearest_neighbours, recall_at_k
from captum_sfam.retrieval import exact_top_k
from captum_sfam.similarity import similarity_matrix


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_exact_top_k_equals_a_full_sort(metric, chunk):
    gen = torch.Generator().manual_seed(1)
    queries, gallery = (
        torch.randn(9, 4, generator=gen),
        torch.randn(23, 4, generator=gen),
    )
    gallery[5] = gallery[17]  # a tie: the lower index must come first
    queries[2] = gallery[17] * 2
    exclude = torch.full((9,), -1)
    exclude[4] = 3
    values, indices = exact_top_k(queries, gallery, 6, metric, chunk, exclude)
    full = similarity_matrix(queries, gallery, metric)
    full[4, 3] = -torch.inf
    expected = torch.sort(full, dim=1, descending=True, stable=True)
    assert torch.equal(indices, expected.indices[:, :6])
    torch.testing.assert_close(values, expected.values[:, :6], rtol=1e-5, atol=1e-5)
    assert (indices[4] != 3).all()
    if metric == "cosine":
        assert indices[2, :2].tolist() == [5, 17]


class RecordingTable:
    """A gallery embedding table that records how many rows each read takes."""

    def __init__(self, table):
        self.table, self.shape, self.device, self.reads = (
            table,
            table.shape,
            table.device,
            [],
        )

    def dim(self):
        return self.table.dim()

    def __getitem__(self, key):
        rows = self.table[key]
        self.reads.append(rows.shape[0])
        return rows


def test_exact_top_k_scores_the_gallery_in_chunks():
    gen = torch.Generator().manual_seed(2)
    queries, gallery = (
        torch.randn(4, 3, generator=gen),
        torch.randn(50, 3, generator=gen),
    )
    table = RecordingTable(gallery)
    values, indices = exact_top_k(queries, table, 3, "cosine", chunk_size=8)
    # 7 chunks of at most 8 rows, then the 4 x (3 + 8) candidates re-scored
    # exactly: never the 50 rows at once
    assert table.reads == [8] * 6 + [2] + [4 * (3 + 8)]
    expected = similarity_matrix(queries, gallery, "cosine").topk(3, dim=1)
    assert torch.equal(indices, expected.indices)


def test_exact_top_k_rejects_k_larger_than_the_gallery():
    with pytest.raises(ValueError, match="k must be in"):
        exact_top_k(torch.randn(2, 3), torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match="k must be in"):
        exact_top_k(
            torch.randn(2, 3), torch.randn(4, 3), 4, exclude=torch.tensor([0, 1])
        )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_nearest_neighbours_equal_a_full_sort_leaving_each_out(metric, k):
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(9, 4, generator=gen)
    emb[6] = emb[2]  # ties: for every other row, 2 must come before 6
    emb[7] = emb[2]
    full = similarity_matrix(emb, emb, metric)
    full.fill_diagonal_(-torch.inf)
    expected = torch.sort(full, dim=1, descending=True, stable=True).indices[:, :k]
    nearest = nearest_neighbours(emb, metric, k)
    assert torch.equal(nearest, expected)
    assert not (nearest == torch.arange(9)[:, None]).any()  # never itself
    if k > 1:
        assert nearest[2, :2].tolist() == [6, 7] and nearest[6, :2].tolist() == [2, 7]
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    hits = (labels[expected] == labels[:, None]).any(dim=1)
    assert recall_at_k(emb, labels, metric, k) == int(hits.sum()) / 9


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_top_k_far_from_the_origin_equals_a_float64_sort(metric):
    """Embeddings offset by 1e4 with neighbours 1e-2 apart: the expanded
    float32 distance would cancel to noise; the centred scan and the exact
    re-scoring of k + margin candidates give the float64 ranking."""
    gen = torch.Generator().manual_seed(0)
    offset = torch.full((1, 16), 1e4, dtype=torch.float64)
    gallery = offset + torch.randn(300, 16, generator=gen, dtype=torch.float64)
    queries = gallery[:5] + 1e-2 * torch.randn(
        5, 16, generator=gen, dtype=torch.float64
    )
    if metric == "cosine":  # directions, far from the origin too
        gallery, queries = gallery - offset, queries - offset
    values, indices = exact_top_k(queries.float(), gallery.float(), 5, metric, 64)
    q, g = queries.float().double(), gallery.float().double()
    if metric == "cosine":
        full = (
            torch.nn.functional.normalize(q, dim=-1)
            @ torch.nn.functional.normalize(g, dim=-1).T
        )
    else:
        full = -(torch.cdist(q, g) ** 2)
    expected = torch.sort(full, dim=1, descending=True, stable=True).indices[:, :5]
    assert torch.equal(indices, expected)
