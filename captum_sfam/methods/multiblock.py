r"""Multi-block gradient map: LeGrad's aggregation over the blocks of a ViT."""

from __future__ import annotations

from .._engine.blocks import MultiLayerPairAttribution
from ..functional.multiblock import multiblock_map
from ..functional.similarity import prototype_similarity


class LayerMultiBlockGrad(MultiLayerPairAttribution):
    r"""
    The gradient of the pair score read at several blocks and averaged, for
    vision transformers, where a single-layer CAM is weak.

    After LeGrad (Bousselham, Boggust, Chaybouti, Strobelt, Kuehne, "LeGrad:
    An Explainability Method for Vision Transformers via Feature Formation
    Sensitivity", 2024; code: github.com/WalBouss/LeGrad). For the pair
    score :math:`s` (the model's embedding of the query against the other
    side's embedding: a text's, a reference's, or the support's mean; with
    ``contrast`` :math:`s - s'`) and blocks :math:`l = 1..L` with patch-token
    activations :math:`A_l` and gradients :math:`G_l = \partial s/\partial
    A_l` from one backward pass,

    .. math::
        M_l = \frac{1}{N_l}\sum_n \max(0, G_l^n A_l^n), \qquad
        M = \frac1L\sum_l M_l, \qquad \hat M = \frac{M - \min M}{\max M - \min M}.

    Reconstruction choices: LeGrad differentiates each block's attention map
    (a patched attention forward) against the score of an early-exit
    embedding of that block (its tokens pooled through the tower's final
    norm and projection), keeps the positive part, averages it over heads
    and query tokens, sums over blocks and min-max normalises. Here the
    gradient of the model's own final score is taken at the blocks' outputs
    through ordinary module hooks (no change to the model, any tower: ViT
    blocks or ResNet stages, whose maps are resized to the finest grid), and
    the positive part of gradient x activation (each patch's first-order
    contribution to the score, in the score's units at every depth) replaces
    the attention gradient. Only patch tokens are mapped (prefix tokens
    dropped). For a tower that pools its class token, a block's output patch
    tokens after the last attention do not reach the embedding: read the
    blocks' first norms (``TwoTower.map_layers``) or pass
    ``attribute_to_layer_input=True``. ``normalize=False`` keeps the average
    in score units.

    Not a channel-weighted map: ``channel_weights`` raises, and the member
    is not in ``REGISTRY`` (whose contract checks channel weights); the
    other calls (support images or ``references=``, ``contrast``,
    ``attribute_pairs`` against embeddings) work as for
    :class:`~captum_sfam.LayerCGRAM`.
    """

    pair_score = staticmethod(prototype_similarity)
    map_rule = staticmethod(multiblock_map)


__all__ = ["LayerMultiBlockGrad"]
