r"""Which ``point_to_point`` reading finds true correspondences? Real photos.

Offline: the ImageNet EfficientNet-Lite0 (layer ``bn2``, 1280 x 7 x 7 at
224 px) and the scikit-image photos of ``captum_sfam.demo.pretrained``
(cat, a second view of the cat, coffee, astronaut, rocket, the two
motorcycle views). Each photo is paired with its horizontal mirror, whose
geometry is known exactly: query cell (i, j) is support cell (i, w - 1 - j).
For every forward-only member and every reading ("dot", "cosine",
"weighted"), PCK@t is the share of query cells whose best-scoring support
cell lies within t cells of the true one (Chebyshev distance on the 7 x 7
grid; t = 0: the exact cell).

Also measured, as a candidate reading: the weighted cosine
:math:`\sum_n w_n a^n_Q a^n_S / (\lVert a_Q\rVert \lVert a_S\rVert)`.

    python benchmarks/correspondence_readings.py
"""

from __future__ import annotations

import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from captum_sfam import (
    LayerDecomposition,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
)
from captum_sfam.demo.pretrained import efficientnet_lite0, preprocess, sample_images


def pck(scores: torch.Tensor, tolerances=(0, 1)) -> Dict[int, float]:
    """PCK of (B, h, w, 1, h, w) scores against the horizontal mirror."""
    batch, h, w = scores.shape[:3]
    best = scores.reshape(batch, h, w, -1).argmax(dim=-1)
    by, bx = best // w, best % w
    iy = torch.arange(h).view(1, h, 1).expand(batch, h, w)
    ix = (w - 1 - torch.arange(w)).view(1, 1, w).expand(batch, h, w)
    dist = torch.maximum((by - iy).abs(), (bx - ix).abs())
    return {t: float((dist <= t).float().mean()) for t in tolerances}


def main() -> None:
    start = time.perf_counter()
    model = efficientnet_lite0(embedding=True)
    layer = model.bn2
    photos = sample_images()
    queries = torch.cat([preprocess(img) for img in photos.values()])
    mirrors = queries.flip(-1).unsqueeze(1)  # (B, 1, 3, 224, 224): one shot each
    members = {
        "SFAM (cosine)": LayerSFAM(model, layer, metric="cosine"),
        "SFAM (euclidean)": LayerSFAM(model, layer, metric="euclidean"),
        "Similarity Grad-CAM (cosine)": LayerSimilarityGradCam(
            model, layer, metric="cosine"
        ),
        "RAM (self)": LayerRAM(model, layer),
        "RAM (other)": LayerRAM(model, layer, weighting="other"),
        "Decomposition": LayerDecomposition(model, layer),
    }
    rows: List[str] = []
    for name, method in members.items():
        for reading in ("dot", "cosine", "weighted"):
            scores = method.point_to_point(queries, mirrors, reading=reading)
            p = pck(scores)
            rows.append(f"| {name} | {reading} | {p[0]:.3f} | {p[1]:.3f} |")
        # candidate: weighted cosine, from the member's channel weights
        weights, _ = method.channel_weights(queries, mirrors)
        acts = method.layer_activations(torch.cat([queries, mirrors[:, 0]]))
        q, s = acts.split(queries.shape[0])
        qf = F.normalize(q.flatten(2).transpose(1, 2), dim=-1) * weights[:, None]
        sf = F.normalize(s.flatten(2).transpose(1, 2), dim=-1)
        wcos = (qf @ sf.transpose(1, 2)).reshape(q.shape[0], 7, 7, 1, 7, 7)
        p = pck(wcos)
        rows.append(f"| {name} | (weighted cosine) | {p[0]:.3f} | {p[1]:.3f} |")
    print(f"{queries.shape[0]} photos and their mirrors, EfficientNet-Lite0 bn2 7x7")
    print("| member | reading | PCK@0 | PCK@1 cell |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
