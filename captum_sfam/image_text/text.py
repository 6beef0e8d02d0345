r"""The text side of an image–text match: which words made it match.

:func:`text_token_scores` gives one score per token of each text for an
(image, text) pair: Captum's ``LayerIntegratedGradients`` on the text tower's
token embeddings, integrating the pair score

.. math::

    s(x) = \mathrm{score}\big(u, \; g(x)\big), \qquad
    \phi_i = (e_i - e'_i) \cdot \int_0^1
        \frac{\partial s}{\partial e_i}\big(e' + \alpha (e - e')\big)\,d\alpha,

where :math:`u` is the image embedding, :math:`g` the text tower, :math:`e`
the (L, W) token embeddings of the text and :math:`e'` those of its baseline:
the same ids with every token that is not a start / end / pad token replaced
by the pad token (so the baseline keeps the text's length and the position
the tower pools at). :math:`\phi_i` sums the integrand over the embedding
width. Completeness: :math:`\sum_i \phi_i = s(e) - s(e')` up to the
integration error, returned as ``delta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor

from ..functional.similarity import paired_similarity

__all__ = ["TokenScores", "baseline_ids", "text_token_scores"]

#: a row-wise score of two (P, D) batches of embeddings -> (P,)
RowScore = Callable[[Tensor, Tensor], Tensor]


@dataclass
class TokenScores:
    r"""What :func:`text_token_scores` returns, one entry per text.

    Attributes:
        tokens (list of list of str): the tokens of each text, as strings,
                    start / end tokens included, padding dropped.
        scores (list of Tensor): float32 (or wider) scores, one per token of
                    ``tokens[t]`` (special tokens score exactly 0: they are
                    the same in the baseline).
        delta (Tensor): (T,) completeness error:
                    ``scores[t].sum() - (score[t] - baseline_score[t])``.
        score (Tensor): (T,) the pair score of each (image, text).
        baseline_score (Tensor): (T,) the pair score of each baseline text.
        ids (Tensor): (T, L) the token ids explained.
    """

    tokens: List[List[str]]
    scores: List[Tensor]
    delta: Tensor
    score: Tensor
    baseline_score: Tensor
    ids: Tensor

    def words(self, index: int = 0) -> List[tuple]:
        """``(token, score)`` pairs of text ``index``, specials included."""
        return list(zip(self.tokens[index], self.scores[index].tolist()))


def baseline_ids(ids: Tensor, special_token_ids: Sequence[int], pad: int) -> Tensor:
    r"""The integrated-gradients baseline of token ids: every id that is not
    special replaced by ``pad``.

    Args:
        ids (Tensor): (T, L) long token ids.
        special_token_ids (sequence of int): start / end / pad ids, kept.
        pad (int): the pad token id.

    Returns:
        (T, L) long ids, the same special tokens at the same positions.
    """
    special = torch.tensor(sorted(set(special_token_ids)), device=ids.device)
    keep = torch.isin(ids, special.to(ids.dtype))
    return torch.where(keep, ids, torch.full_like(ids, int(pad)))


def _row_score(tower: Any, metric: Union[None, str, RowScore]) -> RowScore:
    """The pair score: the tower's own (``metric=None``), a named one, or a
    callable."""
    if metric is None:
        own = getattr(tower, "metric", None)
        return own if callable(own) else _named("cosine")
    if isinstance(metric, str):
        return _named(metric)
    if callable(metric):
        return metric
    raise TypeError(
        f"metric must be None (the model's own score), 'cosine', 'euclidean' "
        f"or a callable scoring two (P, D) batches row by row, got {metric!r}"
    )


def _named(metric: str) -> RowScore:
    if metric not in ("cosine", "euclidean"):
        raise ValueError(
            f"metric must be 'cosine' or 'euclidean' (or None, a callable), "
            f"got {metric!r}"
        )

    def score(a: Tensor, b: Tensor) -> Tensor:
        return paired_similarity(a, b, metric)

    return score


def _device(module: Any) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _text_ids(tower: Any, texts: Union[str, Sequence[str], Tensor]) -> Tensor:
    """(T, L) token ids of the texts (checked when given as ids), on the text
    tower's device."""
    if isinstance(texts, Tensor):
        ids = texts
        check = getattr(tower, "check_ids", None)
        if check is not None:
            check(ids, "texts")
    else:
        ids = tower.tokenize([texts] if isinstance(texts, str) else list(texts))
    return ids.to(_device(tower.text_model))


def _image_embeddings(
    tower: Any, images: Tensor, count: int, device: torch.device
) -> Tensor:
    """(T, D) finite image embeddings, one per text, from images or
    embeddings, on the text tower's ``device``."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(
            "images_or_image_embeddings must be a floating point Tensor: images "
            "(B, 3, H, W) or image embeddings (B, D)"
        )
    if images.dim() == 4:
        emb = tower.encode_image(images)
    elif images.dim() in (1, 2):
        emb = images.detach().reshape(-1, images.shape[-1])
    else:
        raise ValueError(
            "images_or_image_embeddings must be images (B, 3, H, W) or image "
            f"embeddings (B, D), got shape {tuple(images.shape)}"
        )
    if emb.shape[0] not in (1, count):
        raise ValueError(
            f"images_or_image_embeddings has {emb.shape[0]} rows for {count} "
            "texts: pass one image (explained against every text) or one per text"
        )
    if emb.device != device:
        raise ValueError(
            f"images_or_image_embeddings is on {emb.device}, the text "
            f"tower on {device}: move them to one device"
        )
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("images_or_image_embeddings holds NaN or inf values")
    return emb.expand(count, -1)


def text_token_scores(
    tower: Any,
    images_or_image_embeddings: Tensor,
    texts: Union[str, Sequence[str], Tensor],
    n_steps: int = 32,
    method: str = "gausslegendre",
    metric: Union[None, str, RowScore] = None,
    internal_batch_size: Optional[int] = None,
) -> TokenScores:
    r"""One score per token of each text: which words made the image match it.

    Captum's ``LayerIntegratedGradients`` on ``tower.token_embedding`` with
    the pair score :math:`s = \mathrm{score}(u, g(\text{ids}))` as the
    output, batched over the T texts (one call, ``T * n_steps`` rows through
    the text tower, in chunks of ``internal_batch_size``).

    Args:
        tower (TwoTower): a :class:`~captum_sfam.image_text.TwoTower` (or any
                    object with ``text_model``, ``token_embedding``,
                    ``tokenize``, ``tokens``, ``special_token_ids``,
                    ``pad_token_id`` and ``encode_image``).
        images_or_image_embeddings (Tensor): images (B, 3, H, W), embedded
                    with ``tower.encode_image``, or image embeddings (B, D) /
                    (D,); B is 1 (one image against every text) or T (one
                    image per text).
        texts (str, sequence of str or Tensor): T texts, or their (T, L)
                    token ids. A text longer than the context is truncated
                    with a warning naming it; an empty text raises a
                    ``ValueError``.
        n_steps (int, optional): integration steps. Default: 32
        method (str, optional): Captum's integration rule. Default:
                    "gausslegendre"
        metric (None, str or Callable, optional): the pair score; ``None``:
                    the model's own (``tower.metric``, e.g. CLIP's
                    ``logit_scale * cos``), else "cosine", "euclidean" or a
                    callable scoring two (P, D) batches row by row.
                    Default: None
        internal_batch_size (int, optional): rows per text-tower pass.
                    Default: None (all ``T * n_steps`` at once)

    Returns:
        :class:`TokenScores`: tokens as strings, one float32 score per token,
        the pair scores of the texts and their baselines, and the
        completeness error ``delta`` (T,).

    Raises:
        ValueError: no text, an empty text, ids outside the tower's
            vocabulary or context, image embeddings of another width, on
            another device than the text tower or not finite (each message
            names the argument).
        TypeError: images that are not a floating point tensor, a text that
            is not a string.
    """
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    ids = _text_ids(tower, texts)
    image_emb = _image_embeddings(
        tower, images_or_image_embeddings, ids.shape[0], ids.device
    )
    score_fn = _row_score(tower, metric)
    base = baseline_ids(ids, tower.special_token_ids, tower.pad_token_id)
    with torch.no_grad():
        text_emb = tower.text_model(ids)
        if text_emb.shape[-1] != image_emb.shape[-1]:
            raise ValueError(
                f"images_or_image_embeddings has width {image_emb.shape[-1]}, "
                f"the text embeddings {text_emb.shape[-1]}: embeddings of the "
                "same model are needed"
            )
        image_emb = image_emb.to(text_emb.dtype)
        score = score_fn(image_emb, text_emb).float()
        baseline_score = score_fn(image_emb, tower.text_model(base)).float()

    def forward(token_ids: Tensor, image: Tensor) -> Tensor:
        return score_fn(image, tower.text_model(token_ids))

    lig = LayerIntegratedGradients(forward, tower.token_embedding)
    attr, delta = lig.attribute(
        ids,
        baselines=base,
        additional_forward_args=(image_emb,),
        n_steps=n_steps,
        method=method,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    per_token = attr.detach().sum(dim=-1)
    per_token = per_token.to(torch.promote_types(per_token.dtype, torch.float32))
    if not bool(torch.isfinite(per_token).all()):
        raise ValueError(
            "the token scores are not finite: the text tower's score has no "
            "finite gradient on these texts (check the model in float32)"
        )
    tokens = tower.tokens(ids)
    scores = [per_token[t, : len(row)].cpu() for t, row in enumerate(tokens)]
    return TokenScores(
        tokens=tokens,
        scores=scores,
        delta=delta.detach().float().cpu(),
        score=score.cpu(),
        baseline_score=baseline_score.cpu(),
        ids=ids.cpu(),
    )
