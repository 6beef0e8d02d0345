r"""SimilarityTarget: make any Captum method explain a metric-learning model.

Also the public home of the similarity functions (defined in
:mod:`captum_sfam.functional.similarity`): ``similarity_matrix``,
``paired_similarity`` and ``exact_top_k``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from ._engine.checks import check_finite, check_metric, select_embedding
from ._engine.model import (
    EmbeddingFunc,
    check_embedding_func,
    find_model,
    patch_size,
    prefix_tokens,
    warn_if_classifier,
)
from ._engine.pairs import group_by_label
from ._engine.references import same_width
from ._engine.taps import GridTap, modules_of, taps_and_checks
from .functional.similarity import (
    COSINE_EPS,
    MetricFunc,
    exact_top_k,
    paired_similarity,
    similarity_matrix,
)


def flatten_embeddings(embeddings: Tensor) -> Tensor:
    """(B, ...) model outputs -> (B, D) embeddings."""
    return embeddings.reshape(embeddings.shape[0], -1)


def embed(
    model: Callable[..., Any],
    images: Tensor,
    additional_forward_args: Optional[Any] = None,
    embedding_func: EmbeddingFunc = None,
) -> Tensor:
    """(B, D) embeddings of ``images`` (B, ...), without recording a graph.

    ``embedding_func`` picks the embedding in a dict, tuple or ``ModelOutput``
    output (a key, an index or a callable; see the gradient members)."""
    args = additional_forward_args
    if args is None:
        args = ()
    elif not isinstance(args, tuple):
        args = (args,)
    with torch.no_grad():
        return select_embedding(model(images, *args), embedding_func)


def support_images(support: object, name: str = "support") -> Tensor:
    """Checked (R, K, C, H, W) support images from (R, K, C, H, W) or
    (R, C, H, W) (one shot each): floating point, R, K >= 1, finite. Errors
    name the argument ``name``."""
    if not isinstance(support, Tensor) or not support.is_floating_point():
        raise TypeError(f"{name} must be a floating point Tensor")
    if support.dim() == 4:
        support = support.unsqueeze(1)
    if support.dim() != 5 or support.shape[0] == 0 or support.shape[1] == 0:
        raise ValueError(
            f"{name} must be (R, K, C, H, W) or (R, C, H, W) with R, K >= 1, "
            f"got {tuple(support.shape)}"
        )
    check_finite(support, names=[name])
    return support


def prototypes(
    model: Callable[..., Any],
    support: Tensor,
    additional_forward_args: Optional[Any] = None,
    embedding_func: EmbeddingFunc = None,
    support_labels: Optional[Any] = None,
) -> Tensor:
    r"""Class prototypes: the mean embedding of each class's K shots.

    ``support`` is (R, K, C, H, W), K shots of each of R classes, or
    (R, C, H, W) for one shot each; or, with ``support_labels`` (M,), a flat
    (M, C, H, W) support as easyfsl and pytorch-metric-learning hold it,
    grouped into classes in increasing label order. Returns (R, D), from one
    batched forward without a graph.
    """
    if support_labels is not None and isinstance(support, Tensor):
        support, _ = group_by_label(support, support_labels)
    support = support_images(support)
    classes, shots = support.shape[:2]
    emb = embed(model, support.flatten(0, 1), additional_forward_args, embedding_func)
    return emb.reshape(classes, shots, -1).mean(dim=1)


def _reference_embeddings(references: object, name: str, metric: str) -> Tensor:
    """Checked (R, D) reference embeddings from (R, ...) or (D,), detached."""
    if not isinstance(references, Tensor):
        raise TypeError(f"{name} must be a Tensor")
    if not references.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {references.dtype}")
    if references.dim() == 1:
        references = references.unsqueeze(0)
    if references.dim() < 2 or references.shape[0] == 0:
        raise ValueError(
            f"{name} must be (R, D) with R >= 1, got {tuple(references.shape)}"
        )
    references = flatten_embeddings(references.detach())
    check_finite(references, names=[name])
    if metric == "cosine" and bool(
        (torch.linalg.vector_norm(references, dim=-1) < COSINE_EPS).any()
    ):
        raise ValueError(f"{name} contains a zero vector: cosine is undefined")
    return references.clone()


class SimilarityTarget(Module):
    r"""
    Turns an embedding model and R reference embeddings into a model whose
    outputs are similarities, so that every Captum method (``LayerGradCam``,
    ``IntegratedGradients``, ``Occlusion``, ...) explains a metric-learning
    decision with ``target=r``: the reference index plays the role of the
    class index of a classifier.

    ``forward(x)`` returns a (B, R) tensor: the cosine similarity between the
    embedding of each input and each reference (``metric="cosine"``), or the
    negative squared Euclidean distance (``metric="euclidean"``, what
    prototypical networks and FRN use as logits). Embeddings with more than two
    dimensions are flattened. An input embedding of norm below ``1e-8`` has
    cosine similarity 0 to everything (as ``F.cosine_similarity``).

    With ``contrast`` (contrast references :math:`r'`, one per reference or
    one for all), ``forward`` returns
    :math:`\mathrm{sim}(e, r) - \mathrm{sim}(e, r')`: any Captum method then
    explains why the input matches reference r *rather than* r' (few-shot:
    the predicted class against the runner-up; retrieval: rank 1 against
    rank 2).

    The references are a registered buffer: they move with ``.to(device)`` and
    are never expanded by methods that repeat the inputs (IG, NoiseTunnel).
    The embedding model is a submodule, used as is: its mode
    (``train``/``eval``) is yours to set.

    Examples::

        >>> target = SimilarityTarget.from_support(embed, support_images)
        >>> gc = LayerGradCam(target, embed.layer4)
        >>> attr = gc.attribute(query, target=2)  # why is query like class 2?
        >>> ig = IntegratedGradients(target)
        >>> attr = ig.attribute(query, target=2)
    """

    references: Tensor
    contrast: Optional[Tensor]

    def __init__(
        self,
        embedding_model: Module,
        references: Tensor,
        metric: Union[str, MetricFunc] = "cosine",
        contrast: Optional[Tensor] = None,
        embedding_func: EmbeddingFunc = None,
    ) -> None:
        r"""
        Args:

            embedding_model (torch.nn.Module or Callable): maps inputs to
                        embeddings (B, D) (or (B, ...), flattened).
            references (Tensor): reference embeddings (R, D), or (D,) for one
                        reference. Detached and stored as a buffer.
            metric (str or Callable, optional): "cosine", "euclidean", or a
                        learned similarity: a callable scoring two (P, D)
                        batches of embeddings row by row, (P,) scores (e.g. a
                        Siamese model's head).
                        Default: "cosine"
            contrast (Tensor, optional): contrast reference embeddings, (R, D)
                        (one per reference), or (1, D) / (D,) (one for all):
                        output r becomes sim(e, references[r]) -
                        sim(e, contrast[r]). Stored as a buffer.
                        Default: None
            embedding_func (str, int or Callable, optional): picks the
                        embedding in the model's output when it is a dict, a
                        tuple or a Hugging Face ``ModelOutput`` (a key such as
                        ``"pooler_output"``, an index, or a callable).
                        Default: None (the output is the embedding)
        """
        super().__init__()
        if not callable(embedding_model):
            raise TypeError("embedding_model must be callable")
        custom = callable(metric) and not isinstance(metric, str)
        self.metric = metric if custom else check_metric(metric)
        self.embedding_func = check_embedding_func(embedding_func)
        warn_if_classifier(find_model(embedding_model), self.embedding_func)
        #: the class label of each reference, when built with support_labels
        self.classes: Optional[Tensor] = None
        references = _reference_embeddings(references, "references", self.metric)
        if contrast is not None:
            contrast = _reference_embeddings(contrast, "contrast", self.metric)
            if contrast.shape[0] not in (1, references.shape[0]) or (
                contrast.shape[1] != references.shape[1]
            ):
                raise ValueError(
                    f"contrast must be (R, D) or (1, D) for references of shape "
                    f"{tuple(references.shape)}, got {tuple(contrast.shape)}"
                )
        self.embedding_model = embedding_model
        self._taps: List[Tuple[Module, Module]] = []
        self.register_buffer("references", references)
        self.register_buffer("contrast", contrast)

    @classmethod
    def from_support(
        cls,
        embedding_model: Module,
        support: Tensor,
        metric: Union[str, MetricFunc] = "cosine",
        additional_forward_args: Optional[Any] = None,
        contrast_support: Optional[Tensor] = None,
        support_labels: Optional[Any] = None,
        embedding_func: EmbeddingFunc = None,
    ) -> SimilarityTarget:
        r"""Builds prototypes from support images, one per reference.

        Args:

            embedding_model (torch.nn.Module): as in the constructor.
            support (Tensor): (R, K, C, H, W) images, K shots for each of R
                        classes; a (R, C, H, W) tensor means K = 1.
            metric (str, optional): "cosine" or "euclidean".
                        Default: "cosine"
            additional_forward_args (Any, optional): extra arguments for the
                        embedding model.
                        Default: None
            contrast_support (Tensor, optional): (R, K', C, H, W) or
                        (R, C, H, W) images (or R = 1, one contrast for all)
                        whose prototypes become the contrast references.
                        Default: None
            support_labels (list[int] or Tensor, optional): labels (M,) of a
                        flat (M, C, H, W) support: classes are grouped in
                        increasing label order, so ``target=r`` is the r-th
                        smallest label; ``.classes`` holds the labels.
                        Default: None
            embedding_func (str, int or Callable, optional): as in the
                        constructor.
                        Default: None

        Returns:
            A :class:`SimilarityTarget` whose references are the prototypes:
            the means of the K embeddings of each class (computed under
            ``torch.no_grad()`` in one batched forward).
        """
        args, func = additional_forward_args, embedding_func
        references = prototypes(embedding_model, support, args, func, support_labels)
        contrast = None
        if contrast_support is not None:
            contrast = prototypes(embedding_model, contrast_support, args, func)
        target = cls(embedding_model, references, metric, contrast, embedding_func=func)
        if support_labels is not None:  # checked by prototypes()
            target.classes = torch.unique(torch.as_tensor(support_labels).cpu())
        return target

    def grid(self, layer: Module, num_prefix_tokens: Optional[int] = None) -> Module:
        r"""A module showing the tokens (B, T, N) of ``layer`` (a vision
        transformer block) as the patch grid (B, N, h, w), for Captum's layer
        methods: ``LayerGradCam(target, target.grid(block))`` returns
        (B, 1, h, w) maps. While this target runs, a hook lays the block's
        patch tokens on the grid (prefix tokens and patch size read from the
        model, as :func:`~captum_sfam.tokens_to_grid` would be told), passes
        them through the returned module and back, values unchanged."""
        if not any(m is layer for m in modules_of(self.embedding_model)):
            raise ValueError("layer is not a submodule of embedding_model")
        model = find_model(self.embedding_model, layer)
        prefix = (
            prefix_tokens(model) if num_prefix_tokens is None else num_prefix_tokens
        )
        tap = GridTap(prefix, patch_size(model))
        self._taps.append((layer, tap))
        return tap

    def forward(self, inputs: Tensor, *args: Any) -> Tensor:
        with taps_and_checks(self._taps, self.embedding_model, tuple(inputs.shape)):
            output = self.embedding_model(inputs, *args)
        emb = select_embedding(output, self.embedding_func)
        if torch.is_grad_enabled() and not emb.requires_grad:
            self._check_autograd(inputs)
        if same_width(self.metric) and emb.shape[-1] != self.references.shape[-1]:
            raise ValueError(
                f"references have width {self.references.shape[-1]} but "
                f"embedding_model gives embeddings of width {emb.shape[-1]}: "
                "pass references of the same model (its other tower's)"
            )
        if emb.device != self.references.device:
            raise ValueError(
                f"references are on {self.references.device}, the embeddings "
                f"on {emb.device}: move the target with .to(device)"
            )
        refs = self.references.to(emb.dtype)
        scores = similarity_matrix(emb, refs, self.metric)
        if self.contrast is not None:  # sim(e, r) - sim(e, r')
            against = similarity_matrix(emb, self.contrast.to(emb.dtype), self.metric)
            scores = scores - against
        return scores

    def _check_autograd(self, inputs: Tensor) -> None:
        """Raise when a gradient is wanted (grad enabled, and the inputs or
        the model's parameters require grad) but the embedding has none."""
        model = find_model(self.embedding_model)
        params = model.parameters() if model is not None else ()
        wanted = (isinstance(inputs, Tensor) and inputs.requires_grad) or any(
            p.requires_grad for p in params
        )
        if wanted:
            raise ValueError(
                "SimilarityTarget: embedding_model computes the embedding "
                "without autograd (it runs under torch.no_grad() or "
                "torch.inference_mode(), as pytorch-metric-learning's "
                "InferenceModel.get_embeddings does, or detaches it): Captum's "
                "gradient methods need its gradient. Pass the model itself "
                "(e.g. trunk followed by embedder) as embedding_model; for "
                "similarities only, call it under torch.no_grad()"
            )


__all__ = [
    "COSINE_EPS",
    "MetricFunc",
    "SimilarityTarget",
    "embed",
    "exact_top_k",
    "flatten_embeddings",
    "paired_similarity",
    "prototypes",
    "similarity_matrix",
    "support_images",
]
