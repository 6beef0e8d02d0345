r"""The pair-attribution family: one file per member, and the registry.

Every member explains a query against a K-shot support with
``attribute(inputs, support, ...)``. Forward-only members (SFAM, similarity
Grad-CAM, RAM, Decomposition) define one pure weight rule on pooled vectors;
gradient members (CG-RAM, Grad-FAM) define one pair score whose layer gradient
gives the weights; the pure rules live in :mod:`captum_sfam.functional`.
``REGISTRY`` lists them all, in display order; the command line, the
benchmark and the contract tests read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple, Type, Union

from .._engine.base import PairAttribution
from .._engine.correspondence import READINGS
from .._engine.forward import ForwardPairAttribution
from .._engine.gradient import GradientPairAttribution
from .cg_ram import LayerCGRAM
from .decomposition import LayerDecomposition
from .grad_fam import LayerGradFAM
from .ram import LayerRAM
from .sfam import LayerSFAM
from .similarity_grad_cam import LayerSimilarityGradCam


@dataclass(frozen=True)
class Member:
    """A registry entry: the key used on the command line, the class, a label."""

    key: str
    cls: Type[PairAttribution]
    display_name: str

    @property
    def supported_metrics(self) -> Tuple[str, ...]:
        return self.cls.supported_metrics

    @property
    def forward_only(self) -> bool:
        """True when the member needs no gradient (and has ``attribute_pairs``)."""
        return issubclass(self.cls, ForwardPairAttribution)


#: every member of the family, by key (one line per member)
REGISTRY: Dict[str, Member] = {
    member.key: member
    for member in (
        Member("sfam", LayerSFAM, "SFAM"),
        Member("simgradcam", LayerSimilarityGradCam, "Similarity Grad-CAM"),
        Member("cgram", LayerCGRAM, "CG-RAM"),
        Member("gradfam", LayerGradFAM, "Grad-FAM"),
        Member("ram", LayerRAM, "RAM"),
        Member("decomposition", LayerDecomposition, "Decomposition"),
    )
}


def supports_contrast(method: Union[PairAttribution, type]) -> bool:
    """True when the member (an object with its settings, or a class with
    its defaults' capabilities) explains a support against ``contrast=``:
    read from its ``contrast_refusal``, the one place a member declares it
    (Grad-FAM, RAM with ``weighting="self"``)."""
    return getattr(method, "contrast_refusal", None) is None


__all__ = [
    "READINGS",
    "REGISTRY",
    "ForwardPairAttribution",
    "GradientPairAttribution",
    "PairAttribution",
    "LayerCGRAM",
    "LayerDecomposition",
    "LayerGradFAM",
    "LayerRAM",
    "LayerSFAM",
    "LayerSimilarityGradCam",
    "Member",
    "supports_contrast",
]
