r"""Forward-only members: a pure weight rule on pooled vectors.

:class:`ForwardPairAttribution` reads a call top to bottom: arguments ->
pairs (:mod:`.pairs`) -> features (:class:`~.layer.Layer`, forward only) ->
the member's weight rule (:mod:`captum_sfam.functional`) -> maps (Eq. 3).
Rules broadcast over leading dimensions, so the same rule serves
``attribute`` (B queries, a shared or per-query support) and
``attribute_pairs`` (Q queries x M gallery items).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor

from ..functional.pair import PooledPair
from .base import PairAttribution
from .checks import (
    PoolingType,
    check_finite,
    check_positive_int,
    finalize_maps,
    public_call,
    weighted_sum,
)
from .pairs import Features, Pairs, TargetType, TensorOrTuple, pair_arguments
from .references import refuse_references

#: weights built at once by ``attribute_pairs`` (queries x items x shots x N)
MAX_CHUNK_ELEMENTS = 1 << 21
Maps = Union[Tensor, Tuple[Tensor, Tensor]]


class ForwardPairAttribution(PairAttribution):
    r"""Base of the members whose channel weights are a pure rule on pooled
    vectors (SFAM, similarity Grad-CAM, RAM, Decomposition): forward only,
    no gradient, and the network stops right after the layer.

    A member declares ``weight_rule``, a function of
    :mod:`captum_sfam.functional` mapping a
    :class:`~captum_sfam.functional.PooledPair` (and ``rule_options``) to query
    weights (..., N) and shot
    weights (..., K or 1, N); optionally ``map_rule`` (activations of the
    query, the support and the contrast, and ``map_options``, to maps)
    where its maps are not the weighted sum of Eq. 3.
    """

    weight_rule: Callable[..., Tuple[Tensor, Tensor]]
    map_rule: Optional[Callable[..., Tuple[Tensor, Tensor]]] = None

    @log_usage(part_of_slo=True)
    @public_call
    def attribute(
        self,
        inputs: TensorOrTuple,
        support: Optional[TensorOrTuple] = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_support_attributions: bool = False,
        contrast: Optional[TensorOrTuple] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
        references: Optional[Tensor] = None,
    ) -> Maps:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): The queries, (B, C, H, W)
                        for an image model. A tuple for models taking several
                        tensors.
            support (Tensor or tuple[Tensor, ...]): Either (K, C, H, W): one
                        K-shot support shared by every query (its activations
                        are computed once), or (B, K, C, H, W): one support per
                        query. K = 1 is a plain pair. The support vector is the
                        mean of the K pooled shots (Eq. 1 of the SFAM paper).
                        A tuple, matching ``inputs``, for models taking several
                        tensors.
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs, for the queries and
                        for the support alike (so they must not depend on the
                        batch size).
                        Default: None
            attribute_to_layer_input (bool, optional): Explain the layer's
                        input instead of its output, as in Captum.
                        Default: False
            relu_attributions (bool, optional): Apply ReLU to the maps, as the
                        original CAM-style methods do before display.
                        Default: False
            return_support_attributions (bool, optional): Also return the maps
                        of the support images (Fig. 2 of the SFAM paper).
                        Default: False
            contrast (Tensor or tuple[Tensor, ...], optional): a second
                        support S' in the layouts of ``support`` ((K', C, H, W)
                        shared or (B, K', C, H, W) per query): the maps then
                        explain why the query matches ``support`` rather than
                        ``contrast`` (each member's formula is in its class
                        docstring and docs/concepts.md, "Contrast"). The
                        contrast images run in the same forward pass as the
                        queries and the support when the model is in eval mode.
                        Default: None
            target (int, list[int] or Tensor, optional): Captum's target, the
                        reference each query is explained against: with a
                        target, ``support`` holds R references, (R, C, H, W)
                        one-shot or (R, K, C, H, W), each run once, and query b
                        is explained against ``support[target[b]]``. This is
                        the form for ``NoiseTunnel`` and ``sensitivity_max``,
                        which repeat the inputs and the target together. With
                        ``support_labels``, the target holds labels.
                        Default: None
            support_labels (list[int] or Tensor, optional): labels (M,) of a
                        flat support (M, C, H, W), as easyfsl and
                        pytorch-metric-learning hold it: the support is grouped
                        into classes in label order (each class needs the same
                        number of shots) and ``target`` gives the label each
                        query is explained against.
                        Default: None

        Returns:
            *Tensor* or *tuple[Tensor, Tensor]* of **attributions**:
            - **attributions** (*Tensor*): query maps of shape (B, 1, h, w) at
                        the layer's resolution; upsample them with
                        ``LayerAttribution.interpolate(attr, size, "bilinear")``.
            - with ``return_support_attributions=True``, a tuple of the query
                        maps and the support maps, of shape (B, K, 1, h', w').

            Maps are float32 (float64 when the activations are float64),
            detached, and finite.

        Raises:
            ValueError: NaN or inf in the inputs, the support or the
                        activations; shapes that do not fit; a degenerate pair
                        the method cannot explain (see the class docstring).
            TypeError: non-floating inputs or support.

        ``references=`` (embeddings) is refused with a ``ValueError`` naming
        the gradient members: a forward-only member compares the two sides at
        the layer.

        Examples::

            >>> net = torchvision.models.resnet50().eval()
            >>> sfam = LayerSFAM(net, net.layer4, metric="cosine")
            >>> # 8 queries against a shared 5-shot support
            >>> attr = sfam.attribute(queries, support=support)  # (8, 1, 7, 7)
            >>> up = LayerAttribution.interpolate(attr, (224, 224), "bilinear")
            >>> q_maps, s_maps = sfam.attribute(
            ...     queries, support, return_support_attributions=True)
        """
        if references is not None:
            raise refuse_references(type(self).__name__)
        if contrast is not None and self.contrast_refusal is not None:
            raise ValueError(self.contrast_refusal)
        pairs = pair_arguments(
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels,
        )  # fmt: skip
        features = self._features(pairs)
        query_weights, shot_weights = self._weights(features)
        with torch.no_grad():
            query_maps, shot_maps = self._maps(
                features.query, features.support, query_weights, shot_weights,
                return_support_attributions, features.contrast,
            )  # fmt: skip
            dtype = features.query.dtype
            query_maps = finalize_maps(query_maps, relu_attributions, dtype)
            if not return_support_attributions:
                return query_maps.unsqueeze(1)
            shot_maps = shot_maps.expand(len(features.query), *shot_maps.shape[1:])
            shot_maps = finalize_maps(shot_maps, relu_attributions, dtype)
            return query_maps.unsqueeze(1), shot_maps.unsqueeze(2)

    @public_call
    def attribute_pairs(
        self,
        inputs: TensorOrTuple,
        gallery: Optional[TensorOrTuple] = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_gallery_attributions: bool = False,
        chunk_size: Optional[int] = None,
        forward_batch_size: Optional[int] = None,
        contrast: Optional[TensorOrTuple] = None,
        gallery_labels: Optional[TargetType] = None,
        references: Optional[Tensor] = None,
    ) -> Maps:
        r"""Maps for every (query, gallery item) pair, from Q + M·K forwards.

        Retrieval (Q queries against a gallery of M images) and N-way K-shot
        few-shot episodes (M = N classes of K shots) explained in one call:
        each image runs through the network once, then all Q x M weight
        vectors and maps come from the member's weight rule and map function
        broadcast over (query, item), in chunks of queries so that memory
        stays bounded. ``result[i, j]`` equals
        ``attribute(inputs[i:i+1], gallery[j])`` (tested).

        Args:

            inputs (Tensor or tuple[Tensor, ...]): Q queries (Q, C, H, W).
            gallery (Tensor or tuple[Tensor, ...]): (M, C, H, W): M one-shot
                        items (retrieval), or (M, K, C, H, W): M items of K
                        shots each (few-shot classes; the support vector of an
                        item is the mean of its K pooled shots).
            additional_forward_args, attribute_to_layer_input,
            relu_attributions: as in :meth:`attribute`.
            return_gallery_attributions (bool, optional): Also return the maps
                        of the gallery images for every query.
                        Default: False
            chunk_size (int, optional): queries processed at once; by default
                        chosen so that a chunk holds about
                        ``MAX_CHUNK_ELEMENTS`` (2**21) weights.
                        Default: None
            forward_batch_size (int, optional): images per forward pass, for
                        large galleries: bounds the network's activation
                        memory (the explained layer's activations of all
                        images are kept). Default: all at once
            contrast (Tensor or tuple[Tensor, ...], optional): a contrast
                        support, (K', C, H, W) shared by every pair or
                        (Q, K', C, H, W) one per query: pair (i, j) is explained
                        against ``contrast`` (or ``contrast[i]``), as
                        :meth:`attribute` does.
                        Default: None
            gallery_labels (list[int] or Tensor, optional): labels (M,) of a
                        flat gallery (M, C, H, W) of few-shot support images:
                        the gallery is grouped into classes in label order
                        (M/R shots each), so item j of the result is the j-th
                        smallest label.
                        Default: None

        Returns:
            *Tensor* or *tuple[Tensor, Tensor]*: query maps (Q, M, 1, h, w);
            with ``return_gallery_attributions=True`` also the gallery maps,
            (Q, M, 1, h', w') for a (M, C, H, W) gallery and
            (Q, M, K, 1, h', w') for a (M, K, C, H, W) gallery.
        """
        check_positive_int(chunk_size, "chunk_size")
        check_positive_int(forward_batch_size, "forward_batch_size")
        if references is not None:
            raise refuse_references(type(self).__name__)
        if contrast is not None and self.contrast_refusal is not None:
            raise ValueError(self.contrast_refusal)
        pairs = pair_arguments(
            inputs, gallery, additional_forward_args, attribute_to_layer_input,
            contrast, labels=gallery_labels, gallery=True,
        )  # fmt: skip
        features = self._features(pairs, forward_batch_size)
        channels = features.query.shape[1]
        step = chunk_size or max(
            1, MAX_CHUNK_ELEMENTS // (pairs.groups * pairs.shots * channels)
        )
        with torch.no_grad():
            parts = [
                self._gallery_chunk(features, slice(start, start + step), pairs,
                                    return_gallery_attributions)
                for start in range(0, len(features.query), step)
            ]  # fmt: skip
            query_maps = finalize_maps(
                torch.cat([q for q, _ in parts]),
                relu_attributions,
                features.query.dtype,
            ).unsqueeze(2)
            if not return_gallery_attributions:
                return query_maps
            gallery_maps = finalize_maps(
                torch.cat([g for _, g in parts]),
                relu_attributions,
                features.query.dtype,
            ).unsqueeze(3)
        first = gallery[0] if isinstance(gallery, tuple) else gallery
        if first.dim() == pairs.inputs[0].dim() and gallery_labels is None:
            gallery_maps = gallery_maps.squeeze(2)  # one-shot items
        return query_maps, gallery_maps

    def _gallery_chunk(
        self, features: Features, rows: slice, pairs: Pairs, with_gallery: bool
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Maps of the queries ``rows`` against every gallery item: queries
        on dim 0, items on dim 1 (shots on dim 2)."""
        assert features.query_vectors is not None
        assert features.shot_vectors is not None
        contrast_acts = contrast_shots = None
        if features.contrast is not None:  # (1 or Q, 1, K', ...)
            cut = rows if features.contrast.shape[0] > 1 else slice(None)
            contrast_acts = features.contrast[cut].unsqueeze(1)
            contrast_shots = features.contrast_vectors[cut].unsqueeze(1)  # type: ignore[index]
        query = features.query[rows].unsqueeze(1)
        weights = self._rule(
            features,
            features.query_vectors[rows].unsqueeze(1),
            features.shot_vectors.unsqueeze(0),
            contrast_shots,
        )
        query_maps, gallery_maps = self._maps(
            query, features.support.unsqueeze(0), *weights, with_gallery, contrast_acts
        )
        size = (query.shape[0], pairs.groups)
        query_maps = query_maps.expand(*size, *query_maps.shape[2:])
        if gallery_maps is None:
            return query_maps, None
        return query_maps, gallery_maps.expand(*size, *gallery_maps.shape[2:])

    # -- the member's rules ------------------------------------------------
    def _weights(self, features: Features) -> Tuple[Tensor, Tensor]:
        """The weight rule on the pooled features: (B or 1, N), (G, K or 1, N)."""
        assert features.query_vectors is not None
        assert features.shot_vectors is not None
        return self._rule(
            features,
            features.query_vectors,
            features.shot_vectors,
            features.contrast_vectors,
        )

    def _rule(
        self,
        features: Features,
        query_vectors: Tensor,
        shot_vectors: Tensor,
        contrast_shots: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """The member's ``weight_rule`` on pooled vectors (any leading dims),
        with the positions of the features' grids."""
        pair = PooledPair(
            query_vectors,
            shot_vectors,
            features.query.shape[-2] * features.query.shape[-1],
            features.support.shape[-2] * features.support.shape[-1],
            contrast_shots,
        )
        return self.weight_rule(pair, **self.rule_options)

    def _features(self, pairs: Pairs, batch_size: Optional[int] = None) -> Features:
        """Activations at the layer (one forward pass if it can be), pooled:
        the query vectors (B, N), the shots (G, K, N) of each query's support
        (or of each gallery item), and the contrast's."""
        query, others, *contrast = self._layer.forward_pass(pairs, batch_size)
        shots = pool(others, self.pooling).reshape(pairs.groups, pairs.shots, -1)
        support = others.reshape(pairs.groups, pairs.shots, *others.shape[1:])
        if pairs.index is not None:  # each query's reference
            support, shots = support[pairs.index], shots[pairs.index]
        c_acts = c_vectors = None
        if contrast:
            count = (pairs.contrast_groups, pairs.contrast_shots)
            c_vectors = pool(contrast[0], self.pooling).reshape(*count, -1)
            c_acts = contrast[0].reshape(*count, *contrast[0].shape[1:])
        vectors = pool(query, self.pooling)
        return Features(query, support, vectors, shots, c_acts, c_vectors)

    def _maps(
        self,
        query: Tensor,
        support: Tensor,
        query_weights: Tensor,
        shot_weights: Tensor,
        with_support: bool,
        contrast: Optional[Tensor],
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Query maps (..., h, w) and shot maps (..., K, h', w') or None:
        Eq. 3, or the member's ``map_rule``; leading dims broadcast."""
        if self.map_rule is not None:
            return self.map_rule(query, support, contrast, **self.map_options)
        query_maps = weighted_sum(query_weights, query)
        if not with_support:
            return query_maps, None
        return query_maps, weighted_sum(shot_weights, support)


def pool(activations: Tensor, pooling: PoolingType) -> Tensor:
    """Pool (B, N, h, w) activations into (B, N) vectors: the paper's ``p``."""
    if pooling == "avg":
        return activations.mean(dim=(-2, -1))
    if pooling == "max":
        return activations.amax(dim=(-2, -1))
    pooled = pooling(activations)  # type: ignore[operator]
    expected = activations.shape[:2]
    if not isinstance(pooled, Tensor) or pooled.shape != expected:
        got = tuple(pooled.shape) if isinstance(pooled, Tensor) else type(pooled)
        raise ValueError(
            f"pooling callable must map {tuple(activations.shape)} to "
            f"{tuple(expected)}, got {got}"
        )
    pooled = pooled.to(activations.dtype)
    check_finite(pooled, names=["the output of the pooling callable"])
    return pooled
