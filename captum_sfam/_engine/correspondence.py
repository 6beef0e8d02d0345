r"""Point-to-point correspondences: one place for every member.

``point_to_point`` scores each query position :math:`(i, j)` against each
position :math:`(x, y)` of each support shot k, from the layer's position
features :math:`a(i,j) = A(:, i, j) \in R^N`:

- ``"dot"``: :math:`\langle a_Q(i,j), a_{S_k}(x,y)\rangle`, the term of the
  pooled dot product that the two positions contribute (what Zhu et al.'s
  point-to-point activation decomposes);
- ``"cosine"``: :math:`\cos(a_Q(i,j), a_{S_k}(x,y))`, the same on
  L2-normalised position features (a zero feature scores 0);
- ``"weighted"``: :math:`\sum_n w_n\, a^n_Q(i,j)\, a^n_{S_k}(x,y)`, the dot
  product scaled by the member's own query channel weights :math:`w`
  (``channel_weights``).

Scores are (..., h*w, K*h'*w'); the engine reshapes them to
(B, h, w, K, h', w'). Members may replace a reading (Decomposition's "dot" is
its own rectified, max-normalised P).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from torch import Tensor

from ..functional.decomposition import blocks
from .checks import finalize_maps, public_call
from .pairs import TensorOrTuple, pair_arguments

#: the ``reading=`` values of ``point_to_point`` and ``point_map``
READINGS = ("dot", "cosine", "weighted")


def check_reading(reading: object) -> str:
    """``reading`` if it is one of :data:`READINGS`, else ``ValueError``."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    return str(reading)


def position_features(activations: Tensor) -> Tensor:
    """(..., N, h, w) activations -> (..., h*w, N) position features."""
    return activations.flatten(-2).transpose(-1, -2)


def correspondence_scores(
    query: Tensor,
    support: Tensor,
    reading: str,
    weights: Optional[Tensor] = None,
) -> Tensor:
    r"""Scores of every query position against every support position.

    Args:
        query (Tensor): (..., N, h, w) activations.
        support (Tensor): (..., K, N, h', w') activations; leading dims
                    broadcast with ``query``'s.
        reading (str): "dot", "cosine" or "weighted" (see the module).
        weights (Tensor, optional): (..., N) query channel weights, needed by
                    "weighted".

    Returns:
        *Tensor* of shape (..., h*w, K*h'*w').
    """
    q = position_features(query)
    s = position_features(support).flatten(-3, -2)
    if reading == "cosine":
        q, s = F.normalize(q, dim=-1), F.normalize(s, dim=-1)
    elif reading == "weighted":
        if weights is None:
            raise ValueError('reading="weighted" needs the channel weights')
        q = q * weights.to(q.dtype).unsqueeze(-2)  # sum_n w_n a_Q^n a_S^n
    return q @ s.transpose(-1, -2)


def query_cell(
    point: Tuple[float, float], image_size: Tuple[int, int], grid: Tuple[int, int]
) -> Tuple[int, int]:
    """The layer cell (i, j) of an (h, w) grid holding pixel (y, x) of an
    (H, W) image: :math:`i = \\lfloor y h / H\\rfloor`, clipped to the grid."""
    (y, x), (height, width), (h, w) = point, image_size, grid
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(
            f"point (y, x) = {point} lies outside the {height} x {width} query image"
        )
    return min(int(y * h / height), h - 1), min(int(x * w / width), w - 1)


class CorrespondenceMixin:
    r"""``point_to_point`` and ``point_map`` for every member of the family.

    Needs the member's ``_features`` and ``_weights``
    (:class:`~captum_sfam.methods.PairAttribution`); a member
    changes a reading by overriding :meth:`_correspondence_scores` and its
    default by ``correspondence_reading``.
    """

    #: ``point_to_point``'s default reading (measured: docs/concepts.md,
    #: "Point-to-point correspondences")
    correspondence_reading: str = "cosine"

    def _correspondence_scores(
        self, query: Tensor, support: Tensor, reading: str, weights: Optional[Tensor]
    ) -> Tensor:
        """(..., h*w, K*h'*w') position scores, :func:`correspondence_scores`."""
        return correspondence_scores(query, support, reading, weights)

    @public_call
    def point_to_point(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        reading: Optional[str] = None,
    ) -> Tensor:
        r"""Point-to-point correspondences: every query position against every
        position of every support shot.

        Args:
            inputs, support, additional_forward_args, attribute_to_layer_input:
                        as in ``attribute``.
            reading (str, optional): how two positions' layer features
                        :math:`a_Q(i,j)`, :math:`a_{S_k}(x,y)` are scored:
                        "cosine" (:math:`\cos(a_Q, a_S)`), "dot"
                        (:math:`\langle a_Q, a_S\rangle`) or "weighted"
                        (:math:`\sum_n w_n a^n_Q a^n_S`, w the member's query
                        channel weights).
                        Default: the member's ``correspondence_reading``,
                        chosen by measurement (docs/concepts.md,
                        "Point-to-point correspondences")

        Returns:
            Tensor of shape (B, h, w, K, h', w'): ``result[b, i, j]`` is the
            map on the K support shots of query position (i, j);
            ``result[b, ..., k, x, y]`` the map on the query of support
            position (x, y) of shot k. Float32 (float64 for float64
            activations), finite.

        Examples::

            >>> sfam = LayerSFAM(net, net.layer4, metric="cosine")
            >>> scores = sfam.point_to_point(query, support)  # (1, 7, 7, K, 7, 7)
            >>> best = scores[0, 3, 3].flatten().argmax()  # match of cell (3, 3)
        """
        reading = check_reading(
            self.correspondence_reading if reading is None else reading
        )
        pairs = pair_arguments(
            inputs,
            support,
            additional_forward_args,
            attribute_to_layer_input,
            per_query=self._per_query,  # type: ignore[attr-defined]
        )
        features = self._features(pairs)  # type: ignore[attr-defined]
        query, shots, batch = features.query, features.support, pairs.batch_size
        weights = None
        if reading == "weighted":  # (B or 1, N) query channel weights
            weights = self._weights(features)[0]  # type: ignore[attr-defined]
            weights = weights.expand(batch, -1)
        with torch.no_grad():
            parts, start = [], 0
            for q, s in blocks(query, shots):
                w = None if weights is None else weights[start : start + q.shape[0]]
                start += q.shape[0]
                parts.append(self._correspondence_scores(q, s, reading, w))
            scores = torch.cat(parts).reshape(
                batch, *query.shape[-2:], shots.shape[1], *shots.shape[-2:]
            )
            return finalize_maps(scores, False, features.query.dtype)

    def point_map(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        point: Tuple[float, float],
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        reading: Optional[str] = None,
    ) -> Tensor:
        r"""Zhu et al.'s point-specific map: where a query point a user picks
        matches on each support image.

        Args:
            inputs, support, additional_forward_args, attribute_to_layer_input:
                        as in :meth:`point_to_point`.
            reading (str, optional): as in :meth:`point_to_point`.
            point (tuple[float, float]): (y, x) in the query's input pixels;
                        the layer cell holding it is
                        :math:`(\lfloor y h/H\rfloor, \lfloor x w/W\rfloor)`.

        Returns:
            Tensor of shape (B, K, 1, H', W'): that cell's scores of
            :meth:`point_to_point` on each support shot, upsampled bilinearly
            to the support images' size (H', W').
        """
        first = inputs[0] if isinstance(inputs, tuple) else inputs
        shots = support[0] if isinstance(support, tuple) else support
        scores = self.point_to_point(
            inputs, support, additional_forward_args, attribute_to_layer_input,
            reading,
        )  # fmt: skip
        i, j = query_cell(point, tuple(first.shape[-2:]), tuple(scores.shape[1:3]))
        row = scores[:, i, j]  # (B, K, h', w')
        up = LayerAttribution.interpolate(
            row.flatten(0, 1).unsqueeze(1), tuple(shots.shape[-2:]), "bilinear"
        )
        return up.reshape(*row.shape[:2], 1, *up.shape[-2:])
