r"""CG-RAM: Confidence Gradient-weighted RAM (ES-Net, Shen et al., 2021)."""

from __future__ import annotations

from .._engine.gradient import GradientPairAttribution
from ..functional.similarity import prototype_similarity


class LayerCGRAM(GradientPairAttribution):
    r"""
    Confidence Gradient-weighted Ranking Activation Map (CG-RAM): Grad-CAM
    with the pair's matching score as the target.

    Shen, Zhao, Hu, Feng, Cai, He, "ES-Net: Erasing salient parts to learn more
    in re-identification", IEEE TIP 2021 (https://arxiv.org/abs/2103.05918).
    With :math:`f` the model's embedding (the output of ``forward_func``) and
    the matching score :math:`s = \mathrm{sim}(f(Q), \frac1K\sum_k f(S_k))`
    (cosine, or negative squared Euclidean distance),

    .. math::
        \alpha^Q_n = \frac{1}{hw}\sum_{ij}\frac{\partial s}{\partial A^n_{Q,ij}},
        \qquad L_Q = \sum_n \alpha^Q_n A_Q^n,

    and likewise for each support shot with :math:`\partial s/\partial
    A_{S_k}`. The gradients are real (autograd through the whole model, heads
    included); for a model whose embedding is the pooled layer itself CG-RAM
    equals :class:`~captum_sfam.LayerSimilarityGradCam` (tested).

    Reconstruction note: the ES-Net text is the only source (no public code).
    "Confidence" is read as the similarity of the pair; ES-Net may use a
    softmax over the gallery or the support classes instead. For that reading,
    run Captum's ``LayerGradCam`` on a ``SimilarityTarget`` followed by a
    softmax. Per-shot support maps forward the support once per query (B*K
    images) with autograd; use the forward-only methods when speed matters.
    ``forward_func`` must return embeddings (B, D) (flattened otherwise).
    """

    pair_score = staticmethod(prototype_similarity)


__all__ = [
    "LayerCGRAM",
    "prototype_similarity",
]
