r"""Stage 1: the user's arguments -> :class:`Pairs`, what a call explains.

Every image set is flattened to ``(G*K, ...)`` tensors, ``G`` groups of
``K`` shots, before it goes through the network:

- a support (``attribute``): (K, ...) is one K-shot support shared by every
  query (G = 1); (B, K, ...) is one support per query (G = B); with
  ``target`` (Captum's convention) it holds R references, (R, ...) one-shot
  or (R, K, ...), and ``target`` picks each query's; with ``support_labels``
  a flat labelled set (M, ...) is grouped into classes in label order;
- a gallery (``attribute_pairs``): (M, ...) is M one-shot items; (M, K, ...)
  is M items of K shots (G = M);
- a contrast: a second support, in the layouts of a support.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .captum_compat import format_additional_forward_args, format_tensor_into_tuples
from .checks import check_finite, require

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
TargetType = Union[int, List[int], Tensor]
Images = Tuple[Tensor, ...]


@dataclass(frozen=True)
class Pairs:
    r"""What a call explains: B queries, each against its support (or every
    gallery item), optionally against a contrast.

    ``index`` (B,) picks each query's reference among the G groups (given
    with ``target`` or labels); None when G is 1 (shared) or B (per query),
    or for a gallery (all pairs).
    """

    inputs: Images  # (B, ...) queries
    others: Images  # (G*K, ...) support, references or gallery
    groups: int
    shots: int
    argument: str  # "support" or "gallery", for messages
    additional_forward_args: Any
    attribute_to_layer_input: bool
    index: Optional[Tensor] = None
    contrast: Optional[Images] = None  # (G'*K', ...)
    contrast_groups: int = 1
    contrast_shots: int = 1

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    #: the image sets of the call (queries, support or gallery, contrast)
    #: and their names, in that order
    parts: List[Images] = field(init=False)
    names: List[str] = field(init=False)

    def __post_init__(self) -> None:
        parts = [self.inputs, self.others] + ([self.contrast] if self.contrast else [])
        names = ["inputs", self.argument, "contrast"][: len(parts)]
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "names", names)


@dataclass(frozen=True)
class Features:
    r"""What the layer sees of a batch of pairs (stage 2), float32 (float64
    if the activations are). ``G`` is 1 for a shared support (computed once
    and broadcast), B per query, M for a gallery."""

    query: Tensor  # (B, N, h, w) query activations A_Q
    support: Tensor  # (G, K, N, h', w') support activations
    query_vectors: Optional[Tensor] = None  # (B, N) V^Q = p(A_Q)
    shot_vectors: Optional[Tensor] = None  # (G, K, N) pooled shots
    contrast: Optional[Tensor] = None  # (G', K', N, h'', w'')
    contrast_vectors: Optional[Tensor] = None  # (G', K', N)
    query_gradients: Optional[Tensor] = None  # (B, N, h, w) gradient members
    support_gradients: Optional[Tensor] = None  # (B, K, N, h', w')


def _per_query(
    flat: Images, groups: int, shots: int, index: Optional[Tensor], batch: int
) -> Images:
    """(B*K, ...) images of each query: a shared set repeated, references
    picked by ``index``, per-query sets as they are."""
    if index is not None:
        return tuple(
            t.reshape(groups, shots, *t.shape[1:])[index].flatten(0, 1) for t in flat
        )
    if groups != 1:
        return flat
    return tuple(t.unsqueeze(0).expand(batch, *t.shape).flatten(0, 1) for t in flat)


def pair_arguments(
    inputs: TensorOrTuple,
    others: TensorOrTuple,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    contrast: Optional[TensorOrTuple] = None,
    target: Optional[TargetType] = None,
    labels: Optional[TargetType] = None,
    gallery: bool = False,
    per_query: bool = False,
) -> Pairs:
    """Check the arguments of a call and describe its pairs.

    ``others`` is a support (``gallery=False``: shared, per query, or
    references with ``target``/``labels``) or a gallery (``gallery=True``:
    every query against every item; ``labels`` group a flat gallery into
    classes). With ``per_query`` (gradient members) each query gets its
    own copy of its support and contrast (G = B, no index). Raises
    ``TypeError``/``ValueError`` naming the argument at fault.
    """
    queries = format_inputs(inputs)
    argument = "gallery" if gallery else "support"
    index = None
    if labels is not None:
        others, label_index = _grouped(queries, others, labels, target, argument)
        index = None if gallery else label_index
    # a gallery and references (target, labels) are items: (M, ...) is M
    # one-shot items; a support's (K, ...) is one K-shot support
    items = gallery or index is not None or target is not None
    flat, groups, shots = _format_groups(queries, others, argument, items)
    if target is not None and index is None and not gallery:
        index = target_index(target, queries[0].shape[0], groups)
    cflat, cgroups, cshots = None, 1, 1
    if contrast is not None:
        cflat, cgroups, cshots = _format_groups(queries, contrast, "contrast")
    given = (*queries, *flat, *(cflat or ()))
    names = ["inputs"] * len(queries) + [argument] * len(flat)
    names += ["contrast"] * len(cflat or ())
    if index is not None:
        index = index.to(queries[0].device)
    if per_query:
        batch = queries[0].shape[0]
        flat, groups, index = _per_query(flat, groups, shots, index, batch), batch, None
        if cflat is not None:
            cflat = _per_query(cflat, cgroups, cshots, None, batch)
            cgroups = batch
    pairs = Pairs(
        queries, flat, groups, shots, argument,
        format_additional_forward_args(additional_forward_args),
        attribute_to_layer_input, index, cflat, cgroups, cshots,
    )  # fmt: skip
    check_finite(*given, names=names)  # the images as the user gave them
    return pairs


def _grouped(
    queries: Images,
    images: TensorOrTuple,
    labels: TargetType,
    target: Optional[TargetType],
    argument: str,
) -> Tuple[Tensor, Optional[Tensor]]:
    """A flat labelled set (M, ...) grouped into classes, and for a support
    the (B,) index of the class each query's ``target`` label names."""
    if not isinstance(images, Tensor) or len(queries) != 1:
        raise TypeError(f"{argument}_labels needs {argument} as one Tensor (M, ...)")
    if images.dim() != queries[0].dim():
        raise ValueError(
            f"{argument}_labels needs a flat {argument} (M, *inputs.shape[1:]), "
            f"got {tuple(images.shape)}"
        )
    grouped, classes = group_by_label(images, labels, argument)
    if argument == "gallery":
        return grouped, None
    if target is None:
        raise ValueError(
            "support_labels is given: pass target=, the label of the class "
            "each query is explained against (an int or one per query)"
        )
    wanted = target_index(target, queries[0].shape[0], 2**62).to(classes.device)
    index = torch.searchsorted(classes, wanted).clamp(max=classes.numel() - 1)
    if bool((classes[index] != wanted).any()):
        raise ValueError(
            f"target holds labels that are not in support_labels {classes.tolist()}"
        )
    return grouped, index


def format_inputs(inputs: TensorOrTuple) -> Images:
    """The queries as a tuple of non-empty, finite, floating-point batches."""
    if not isinstance(inputs, (Tensor, tuple)):
        raise TypeError("inputs must be a Tensor or a tuple of Tensors")
    formatted = format_tensor_into_tuples(inputs)
    for inp in formatted:
        if not isinstance(inp, Tensor):
            raise TypeError("inputs must be a Tensor or a tuple of Tensors")
        if not inp.is_floating_point():
            raise TypeError(f"inputs must be a floating point tensor, got {inp.dtype}")
        if inp.dim() < 2 or inp.shape[0] == 0:
            raise ValueError(
                f"inputs must be a non-empty batch (B, ...), got {tuple(inp.shape)}"
            )
    return formatted


def group_by_label(
    images: Tensor, labels: object, argument: str = "support"
) -> Tuple[Tensor, Tensor]:
    r"""Group a flat labelled set (M, ...) into classes (R, K, ...).

    The few-shot and metric-learning convention (easyfsl, pytorch-metric-
    learning): images with a label each. Classes come in increasing label
    order, shots in their order of appearance; every class needs the same
    number of shots K. Returns the grouped images and the (R,) class labels.
    """
    name = f"{argument}_labels"
    if isinstance(labels, (list, tuple)):
        labels = torch.as_tensor(labels)
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.dim() != 1
    ):
        raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{name} has {labels.shape[0]} labels but {argument} has "
            f"{images.shape[0]} images"
        )
    labels = labels.cpu()
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    if classes.numel() == 0 or bool((counts != counts[0]).any()):
        raise ValueError(
            f"{name}: every class needs the same number of shots, got "
            f"{dict(zip(classes.tolist(), counts.tolist()))}"
        )
    order = torch.argsort(labels, stable=True).to(images.device)
    grouped = images[order].reshape(classes.numel(), int(counts[0]), *images.shape[1:])
    return grouped, classes


def target_index(
    target: object, batch: int, references: int, name: str = "target"
) -> Tensor:
    """(B,) indices of the reference each query is explained against."""
    if isinstance(target, int) and not isinstance(target, bool):
        index = torch.full((batch,), target, dtype=torch.long)
    elif isinstance(target, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in target
    ):
        index = torch.as_tensor(target, dtype=torch.long)
    elif (
        isinstance(target, Tensor)
        and not target.is_floating_point()
        and target.dim() <= 1
    ):
        index = (
            target.long().reshape(-1).expand(batch)
            if target.dim() == 0
            else target.long()
        )
    else:
        raise TypeError(f"{name} must be an int, a list of ints or an integer tensor")
    if index.shape[0] != batch:
        raise ValueError(f"{name} has {index.shape[0]} entries for {batch} queries")
    require(
        ((index < 0) | (index >= references)).any(),
        f"{name} must be in [0, {references}) (one index per reference)",
    )
    return index.clamp(0, references - 1)


def _format_groups(
    inputs: Images, images: TensorOrTuple, argument: str, items: bool = False
) -> Tuple[Images, int, int]:
    """Flatten a support, a contrast or a gallery (``argument``) to
    (G*K, ...) tensors -> (flat, G, K); with ``items`` (a gallery, or
    references) (M, ...) is M one-shot groups."""
    if isinstance(images, Tensor):
        images = (images,)
    if not isinstance(images, tuple) or not all(isinstance(s, Tensor) for s in images):
        raise TypeError(f"{argument} must be a Tensor or a tuple of Tensors")
    if len(images) != len(inputs):
        raise ValueError(
            f"{argument} must hold one tensor per input tensor ({len(inputs)}), "
            f"got {len(images)}"
        )
    flat, layouts = [], set()
    for inp, sup in zip(inputs, images):
        groups, shots = _layout(inp, sup, argument, items)
        item_shape = sup.shape[sup.dim() - inp.dim() + 1 :]
        if item_shape[0] != inp.shape[1]:
            raise ValueError(
                f"{argument} has {item_shape[0]} channels, inputs has {inp.shape[1]}"
            )
        if sup.device != inp.device:
            raise ValueError(
                f"{argument} is on device {sup.device} but inputs is on device "
                f"{inp.device}"
            )
        layouts.add((groups, shots))
        flat.append(sup.reshape(groups * shots, *item_shape))
    if len(layouts) != 1:
        raise ValueError(f"all {argument} tensors must share the same layout")
    groups, shots = layouts.pop()
    return tuple(flat), groups, shots


def _layout(inp: Tensor, sup: Tensor, argument: str, items: bool) -> Tuple[int, int]:
    """(G, K) of one tensor of a support, contrast or gallery."""
    if not sup.is_floating_point():
        raise TypeError(f"{argument} must be a floating point tensor, got {sup.dtype}")
    if sup.dim() == inp.dim():  # (K, C, H, W) support, (M, C, H, W) gallery
        groups, shots = (sup.shape[0], 1) if items else (1, sup.shape[0])
    elif sup.dim() == inp.dim() + 1:  # (B, K, C, H, W) or (M, K, C, H, W)
        groups, shots = sup.shape[0], sup.shape[1]
        if groups != inp.shape[0] and not items:
            raise ValueError(
                f"{argument} has {groups} per-query supports but inputs has "
                f"{inp.shape[0]} queries"
            )
    else:
        lead = "(M" if items else "(B"
        hint = (
            "; embeddings (R, D) (a text tower's) go in references= of a "
            "gradient member (LayerCGRAM, LayerMultiBlockGrad)"
            if sup.dim() == 2 and inp.dim() > 2
            else ""
        )
        raise ValueError(
            f"{argument} must have shape (K, *inputs.shape[1:]) or "
            f"{lead}, K, *inputs.shape[1:]); got {tuple(sup.shape)} for "
            f"inputs of shape {tuple(inp.shape)}{hint}"
        )
    if shots == 0 or groups == 0:
        raise ValueError(f"{argument} is empty: it needs at least one image")
    return groups, shots
