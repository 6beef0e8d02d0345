r"""Every method of the benchmark as a map function at image size.

:func:`explainers` gives ``f(query, support) -> (H, W)`` for each member of
:data:`captum_sfam.methods.REGISTRY` defined for the metric, and Captum's
LayerGradCam and IntegratedGradients through a
:class:`~captum_sfam.SimilarityTarget`; :func:`contrast_explainers` gives
``f(query, support, contrast) -> (H, W)`` for each method with a contrastive
map, named with the :data:`CONTRAST` suffix.
"""

from __future__ import annotations

from typing import Callable, Dict

from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from torch import Tensor
from torch.nn import Module

from ...methods import REGISTRY, PairAttribution, supports_contrast
from ...similarity import SimilarityTarget

#: (1, C, H, W), (K, C, H, W) -> (H, W)
Explainer = Callable[[Tensor, Tensor], Tensor]
#: (1, C, H, W), support (K, C, H, W), contrast (K', C, H, W) -> (H, W)
ContrastExplainer = Callable[[Tensor, Tensor, Tensor], Tensor]
#: the suffix of the rows whose maps explain a support against a contrast
CONTRAST = " (contrast)"


def _upsampled(attr: Tensor, query: Tensor) -> Tensor:
    """A (1, 1, h, w) map -> (H, W) at the query's size, bilinear."""
    up = LayerAttribution.interpolate(attr.detach(), query.shape[-2:], "bilinear")
    return up[0, 0]


def explainers(
    model: Module, layer: Module, metric: str, ig_steps: int = 32
) -> Dict[str, Explainer]:
    r"""Every method as ``f(query, support) -> (H, W)`` map at image size.

    Args:
        model (Module): the embedding model.
        layer (Module): the explained layer.
        metric (str): ``"cosine"`` or ``"euclidean"``; members not defined
                    for it are left out.
        ig_steps (int): IntegratedGradients' steps. Default: 32

    Returns:
        display name -> explainer; the family first, then
        ``"Captum LayerGradCam"`` and ``"Captum IntegratedGradients"``.
    """

    def family(cls: type) -> Explainer:
        method = cls(model, layer, metric=metric)

        def run(query: Tensor, support: Tensor) -> Tensor:
            return _upsampled(method.attribute(query, support), query)

        return run

    def target(support: Tensor) -> SimilarityTarget:
        return SimilarityTarget.from_support(model, support[None], metric=metric)

    def gradcam(query: Tensor, support: Tensor) -> Tensor:
        attr = LayerGradCam(target(support), layer).attribute(query, target=0)
        return _upsampled(attr, query)

    def integrated_gradients(query: Tensor, support: Tensor) -> Tensor:
        attr = IntegratedGradients(target(support)).attribute(
            query, target=0, n_steps=ig_steps, internal_batch_size=ig_steps
        )
        return attr.detach()[0].abs().sum(0)

    out = {
        member.display_name: family(member.cls)
        for member in REGISTRY.values()
        if metric in member.supported_metrics
    }
    out["Captum LayerGradCam"] = gradcam
    out["Captum IntegratedGradients"] = integrated_gradients
    return out


def contrast_explainers(
    model: Module, layer: Module, metric: str
) -> Dict[str, ContrastExplainer]:
    r"""Every method with a contrastive map as ``f(query, support, contrast)``.

    Args:
        model (Module): the embedding model.
        layer (Module): the explained layer.
        metric (str): ``"cosine"`` or ``"euclidean"``.

    Returns:
        display name + :data:`CONTRAST` -> explainer, for the members that
        take ``contrast=`` with their default settings, and Captum's
        LayerGradCam through a ``SimilarityTarget`` with ``contrast_support``.
    """

    def family(method: PairAttribution) -> ContrastExplainer:
        def run(query: Tensor, support: Tensor, contrast: Tensor) -> Tensor:
            attr = method.attribute(query, support, contrast=contrast)
            return _upsampled(attr, query)

        return run

    def gradcam(query: Tensor, support: Tensor, contrast: Tensor) -> Tensor:
        target = SimilarityTarget.from_support(
            model, support[None], metric=metric, contrast_support=contrast[None]
        )
        attr = LayerGradCam(target, layer).attribute(query, target=0)
        return _upsampled(attr, query)

    members = {
        member.display_name: member.cls(model, layer, metric=metric)
        for member in REGISTRY.values()
        if metric in member.supported_metrics
    }  # default settings: RAM "self" and Grad-FAM have no contrastive map
    out = {
        name + CONTRAST: family(method)
        for name, method in members.items()
        if supports_contrast(method)
    }
    out["Captum LayerGradCam" + CONTRAST] = gradcam
    return out


__all__ = ["CONTRAST", "contrast_explainers", "explainers"]
