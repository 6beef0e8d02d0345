"""visualize_correspondences: the best matches drawn as lines."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.patches import ConnectionPatch  # noqa: E402

from captum_sfam.visualization import visualize_correspondences  # noqa: E402


def lines(fig):
    return [a for a in fig.artists if isinstance(a, ConnectionPatch)]


def test_lines_join_the_best_mutual_matches(tmp_path):
    # query cell (i, j) matches support cell (i, 2 - j): a mirror
    scores = torch.zeros(2, 3, 2, 3)
    for i in range(2):
        for j in range(3):
            scores[i, j, i, 2 - j] = 1.0 + i * 3 + j
    image = torch.rand(3, 20, 30)
    path = tmp_path / "matches.png"
    fig = visualize_correspondences(image, image, scores, matches=4, path=path)
    drawn = lines(fig)
    assert len(drawn) == 4 and path.stat().st_size > 0
    # the 4 best: query cells 5, 4, 3, 2 (scores 6, 5, 4, 3), cell centres
    ends = sorted((round(p.xy1[0]), round(p.xy1[1]), round(p.xy2[0])) for p in drawn)
    assert ends == sorted([(25, 15, 5), (15, 15, 15), (5, 15, 25), (25, 5, 5)])


def test_mutual_filter_drops_one_sided_matches():
    scores = torch.zeros(1, 2, 1, 2)
    scores[0, 0, 0, 0] = 1.0  # cell 0 -> 0
    scores[0, 1, 0, 0] = 2.0  # cell 1 -> 0 too, and 0's best match is 1
    image = torch.rand(8, 8, 3)
    assert len(lines(visualize_correspondences(image, image, scores))) == 1
    both = visualize_correspondences(image, image, scores, mutual=False)
    assert len(lines(both)) == 2


def test_bad_scores_are_rejected():
    image = torch.rand(8, 8, 3)
    with pytest.raises(ValueError, match="scores"):
        visualize_correspondences(image, image, torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="matches"):
        visualize_correspondences(image, image, torch.zeros(1, 1, 1, 1), matches=0)
