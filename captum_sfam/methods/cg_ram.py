r"""CG-RAM: Confidence Gradient-weighted RAM (ES-Net, Shen et al., 2021)."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .._utils.attribution import PairAttribution, PairFeatures, spatial_mean
from ..similarity import flatten_embeddings as _flat
from ..similarity import paired_similarity


class LayerCGRAM(PairAttribution):
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

    def _weights(self, pair: PairFeatures) -> Tuple[Tensor, Tensor]:
        args, to_input = pair.additional_forward_args, pair.attribute_to_layer_input
        batch, shots = pair.batch_size, pair.shots
        query_emb = _flat(self.model_outputs(pair.inputs, args))
        shot_emb = _flat(self.model_outputs(pair.support_inputs, args))
        support_emb = shot_emb.reshape(-1, shots, shot_emb.shape[-1]).mean(dim=1)
        support_emb = support_emb.expand(batch, -1)
        metric = self.metric

        def query_score(output: Tensor) -> Tensor:
            return paired_similarity(
                _flat(output), support_emb.to(output.dtype), metric
            )

        grad_q = self.layer_gradients(pair.inputs, query_score, args, to_input)

        # Support: each (query b, shot k) row is its own image; the score of
        # row (b, k) is s_b / K, so the gradient of the sum w.r.t. A_{S_bk} is
        # exactly ds_b / dA_{S_bk} (s_b depends on the mean of its K shots).
        if pair.shared_support:
            per_query = tuple(
                s.unsqueeze(0).expand(batch, *s.shape).flatten(0, 1)
                for s in pair.support_inputs
            )
        else:
            per_query = pair.support_inputs

        def support_score(output: Tensor) -> Tensor:
            emb = _flat(output).reshape(batch, shots, -1)
            score = paired_similarity(
                emb.mean(dim=1), query_emb.to(output.dtype), metric
            )
            return (score / shots).repeat_interleave(shots)

        grad_s = self.layer_gradients(per_query, support_score, args, to_input)
        grad_s = grad_s.reshape(batch, shots, *grad_s.shape[1:])
        return spatial_mean(grad_q), spatial_mean(grad_s)
