r"""Stage 1 for the other side given as embeddings: ``references=``.

A gradient member may explain its queries against R reference embeddings
(R, D) from any tower or source (the text embeddings of a two-tower model,
prototypes, a gallery's stored vectors) instead of support images; its
``target`` picks each query's reference and its ``contrast`` is another
reference (an index) or an embedding. This module checks those arguments
and describes them in one :class:`ReferencePairs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .checks import check_finite
from .pairs import target_index

#: ``contrast=`` with references: indices into them, or an embedding
ContrastType = Union[int, list, Tensor]

GRADIENT_MEMBERS = "LayerCGRAM, LayerGradFAM or LayerMultiBlockGrad"


@dataclass(frozen=True)
class ReferencePairs:
    """Each query's reference embedding and contrast, checked."""

    references: Tensor  # (R, D), detached
    index: Optional[Tensor]  # (B,) per query, or None for all R (all pairs)
    contrast: Optional[Tensor]  # (B or 1, D) contrast embeddings, or None

    def chosen(self, batch: int) -> Tensor:
        """(B, D) the reference of each query."""
        if self.index is None:
            return self.references.expand(batch, -1)
        return self.references[self.index]


def check_references(references: object, name: str = "references") -> Tensor:
    """(R, D) detached floating-point finite embeddings from (R, D) or (D,)."""
    if not isinstance(references, Tensor):
        raise TypeError(
            f"{name} must be a Tensor of embeddings (R, D), got "
            f"{type(references).__name__}"
        )
    if not references.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {references.dtype}")
    if references.dim() == 1:
        references = references.unsqueeze(0)
    if references.dim() != 2 or references.shape[0] == 0:
        raise ValueError(
            f"{name} must be embeddings (R, D) with R >= 1, got "
            f"{tuple(references.shape)}; pass support= for images"
        )
    check_finite(references, names=[name])
    return references.detach()


def same_width(metric: object) -> bool:
    """Whether ``metric`` compares embeddings of one width: "cosine",
    "euclidean", or a callable declaring ``requires_same_width = True`` (a
    learned callable may compare other widths)."""
    return isinstance(metric, str) or bool(
        getattr(metric, "requires_same_width", False)
    )


def check_width(
    embeddings: Tensor, references: Tensor, name: str, metric: object = "cosine"
) -> None:
    """``ValueError`` naming ``name`` when the widths (for a ``metric`` of one
    width) or the devices differ from the queries' embeddings."""
    if same_width(metric) and references.shape[-1] != embeddings.shape[-1]:
        raise ValueError(
            f"{name} have width {references.shape[-1]} but forward_func gives "
            f"embeddings of width {embeddings.shape[-1]}: pass embeddings of "
            "the same model (its other tower's, projected to the shared space)"
        )
    if references.device != embeddings.device:
        raise ValueError(
            f"{name} are on {references.device} but the embeddings of inputs "
            f"are on {embeddings.device}: move them to one device"
        )


def reference_arguments(
    references: object,
    batch: int,
    target: object = None,
    contrast: object = None,
    all_pairs: bool = False,
) -> ReferencePairs:
    """Check ``references``, ``target`` (per-query indices; None when R is 1
    or B, or for all pairs) and ``contrast`` (indices into the references,
    or an embedding (D,), (1, D) or (B, D))."""
    refs = check_references(references)
    count = refs.shape[0]
    index = None
    if all_pairs:
        if target is not None:
            raise ValueError(
                "target is not taken by attribute_pairs: every query is "
                "explained against every reference"
            )
    elif target is not None:
        index = target_index(target, batch, count).to(refs.device)
    elif count == batch:
        index = torch.arange(batch, device=refs.device)
    elif count != 1:
        raise ValueError(
            f"references holds {count} embeddings for {batch} queries: pass "
            "target=, the index of each query's reference (an int or one per "
            "query)"
        )
    return ReferencePairs(refs, index, _contrast(contrast, refs, batch))


def _contrast(contrast: object, refs: Tensor, batch: int) -> Optional[Tensor]:
    if contrast is None:
        return None
    if isinstance(contrast, Tensor) and contrast.is_floating_point():
        emb = check_references(contrast, "contrast")
        if emb.shape[0] not in (1, batch):
            raise ValueError(
                f"contrast holds {emb.shape[0]} embeddings for {batch} queries: "
                "pass one (D,) or (1, D) for all, or (B, D)"
            )
        if emb.shape[1] != refs.shape[1]:
            raise ValueError(
                f"contrast has width {emb.shape[1]}, references {refs.shape[1]}"
            )
        if emb.device != refs.device:
            raise ValueError(
                f"contrast is on {emb.device}, references on {refs.device}"
            )
        return emb
    if isinstance(contrast, (list, tuple, int, Tensor)) and not isinstance(
        contrast, bool
    ):
        index = target_index(contrast, batch, refs.shape[0], name="contrast")
        return refs[index.to(refs.device)]
    raise TypeError(
        "contrast must be an index into references (int, list, integer tensor) "
        f"or an embedding tensor, got {type(contrast).__name__}"
    )


def check_other_side(
    support: object,
    support_labels: object,
    references: Optional[Tensor],
    return_support_attributions: bool,
) -> None:
    """The other side of a gradient member's pairs is support images or
    reference embeddings, exactly one; references have no support maps."""
    if references is None:
        if support is None:
            raise TypeError(
                "attribute needs the other side: support= (images) or "
                "references= (embeddings (R, D))"
            )
        return
    if support is not None or support_labels is not None:
        raise ValueError(
            "support and references are exclusive: pass support= "
            "(images) or references= (embeddings), not both"
        )
    if return_support_attributions:
        raise ValueError(
            "return_support_attributions: references are embeddings "
            "and have no map; pass support images for support maps"
        )


def refuse_references(member: str) -> ValueError:
    """The error of a forward-only member given ``references=``."""
    return ValueError(
        f"{member} is forward-only: it compares the two sides at the same "
        "layer, so it needs support images, not references (embeddings). "
        f"Explain against embeddings with a gradient member ({GRADIENT_MEMBERS})"
    )
