r"""An adapter so that Quantus scores pair attributions.

`Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_
evaluates explanations of classifiers: a model maps inputs to logits, the
explained class is an index, and an ``explain_func(model, inputs, targets,
**kwargs)`` returns attributions. A metric-learning decision fits this mould
once the "classes" are a set of supports (few-shot classes, gallery items,
enrolled identities):

- :class:`SupportSimilarityModel` is a ``torch.nn.Module`` whose logits are
  the similarities of each input to each support, so the class is the index
  of the matching support (``argmax`` = the model's decision);
- :func:`explain` has Quantus' ``explain_func`` signature and explains each
  input against the support its target names with any member of
  :data:`captum_sfam.methods.REGISTRY`, upsampled to the input's size.

Quantus itself is not imported here; install it with
``pip install "captum-sfam[eval]"``. Example (a faithfulness metric)::

    import quantus
    from captum_sfam.metrics.quantus import SupportSimilarityModel, explain

    model = SupportSimilarityModel(net, supports, metric="cosine", layer="layer4")
    y = model(x).argmax(1)  # the matching support of each query
    scores = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=64)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
        explain_func=explain, explain_func_kwargs={"method": "sfam"},
    )
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from ..similarity import SimilarityTarget, support_images
from ..similarity import prototypes as support_prototypes


class SupportSimilarityModel(SimilarityTarget):
    r"""Similarities to R supports as the logits of an R-class classifier.

    A :class:`~captum_sfam.SimilarityTarget` whose references are the
    prototypes (mean embeddings, Eq. 1) of R supports of K shots each, kept as
    images (a buffer) and embedded again at every call, without a graph:

    .. math::
        \mathrm{forward}(x)_{b, r} = \mathrm{sim}\big(f(x_b),
        \tfrac1K \textstyle\sum_k f(S_{r, k})\big),

    with :math:`\mathrm{sim}` the cosine similarity or the negative squared
    Euclidean distance (:func:`~captum_sfam.similarity.similarity_matrix`).
    Metrics that randomise or perturb the model's weights (Quantus' MPRT,
    RandomLogit, model-parameter noise) therefore see supports embedded by the
    same, changed model; ``references`` holds the prototypes of the last call.
    Gradients flow to the inputs only.

    The supports are embedded once at construction too (the references
    :class:`~captum_sfam.SimilarityTarget` checks: finite, non-zero for
    cosine), in the model's current mode.

    The layer to explain is kept by name, so a deep copy of the wrapper (what
    Quantus' randomisation metrics make) explains its own copy of the layer.
    """

    supports: Tensor

    def __init__(
        self,
        embedding_model: Module,
        supports: Tensor,
        metric: str = "cosine",
        layer: Union[None, str, Module] = None,
    ) -> None:
        r"""
        Args:

            embedding_model (torch.nn.Module): images (B, C, H, W) ->
                        embeddings (B, D) (or (B, ...), flattened).
            supports (Tensor): (R, K, C, H, W), K shots of each of R
                        supports, or (R, C, H, W) for one shot each.
            metric (str, optional): "cosine" or "euclidean".
                        Default: "cosine"
            layer (str or torch.nn.Module, optional): the layer of
                        ``embedding_model`` that :func:`explain` explains, as
                        a submodule name or the module itself.
                        Default: None (then :func:`explain` needs ``layer=``)
        """
        if not isinstance(embedding_model, Module):
            raise TypeError("embedding_model must be a torch.nn.Module")
        supports = support_images(supports, "supports")
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
        name = None if layer is None else _layer_name(embedding_model, layer, "layer")
        references = support_prototypes(embedding_model, supports)
        super().__init__(embedding_model, references, metric)
        self.register_buffer("supports", supports.detach().clone())
        self.layer_name = name

    @property
    def num_classes(self) -> int:
        """R, the number of supports (Quantus' ``num_classes``)."""
        return int(self.supports.shape[0])

    def prototypes(self) -> Tensor:
        """(R, D) mean embedding of each support's shots, without a graph."""
        return support_prototypes(self.embedding_model, self.supports)

    def forward(self, inputs: Tensor) -> Tensor:  # type: ignore[override]
        r"""(B, R) similarities of ``inputs`` (B, C, H, W) to the supports,
        embedded by the model's current weights."""
        self.references = self.prototypes()
        return super().forward(inputs)


def _layer_name(model: Module, layer: Union[str, Module], name: str) -> str:
    if isinstance(layer, str):
        try:
            model.get_submodule(layer)
        except AttributeError as error:
            raise ValueError(f"{name} {layer!r} is not a submodule") from error
        return layer
    if isinstance(layer, Module):
        for path, module in model.named_modules():
            if module is layer:
                return path
        raise ValueError(
            f"{name} is not a submodule of the embedding model (of a copy of the "
            "model, Quantus' randomisation metrics make some: give its name)"
        )
    raise TypeError(f"{name} must be a submodule name or a torch.nn.Module")


def explain(
    model: Module,
    inputs: Union[np.ndarray, Tensor],
    targets: Union[np.ndarray, Tensor, int, Any],
    method: str = "sfam",
    layer: Union[None, str, Module] = None,
    method_kwargs: Optional[Dict[str, Any]] = None,
    upsample: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    **kwargs: Any,
) -> np.ndarray:
    r"""Quantus ``explain_func``: pair attributions of each input against the
    support its target names.

    Input b is explained against the K shots of support ``targets[b]`` (one
    per-query support) by the family member ``method`` built on the wrapped
    embedding model, its layer and metric.

    Args:
        model (SupportSimilarityModel): the model Quantus evaluates (or its
                    copy with randomised layers).
        inputs (np.ndarray or Tensor): (B, C, H, W) images.
        targets (np.ndarray, Tensor or int): (B,) support indices (an int
                    for all).
        method (str, optional): a key of
                    :data:`captum_sfam.methods.REGISTRY` ("sfam",
                    "simgradcam", "cgram", "gradfam", "ram",
                    "decomposition"). Default: "sfam"
        layer (str or torch.nn.Module, optional): the layer to explain.
                    Default: the model's ``layer``
        method_kwargs (dict, optional): more arguments of the member's
                    constructor (e.g. ``{"weighting": "other"}`` for RAM).
        upsample (bool, optional): bilinear upsampling of the layer maps to
                    (H, W), what Quantus' pixel metrics need.
                    Default: True
        device (str or torch.device, optional): where to run (Quantus
                    passes its ``device``). Default: the model's device
        **kwargs: other Quantus keywords, ignored.

    Returns:
        *np.ndarray* (B, 1, H, W) float32 attributions ((B, 1, h, w) without
        upsampling).
    """
    from ..methods import REGISTRY

    if not isinstance(model, SupportSimilarityModel):
        raise TypeError(
            "model must be a SupportSimilarityModel (it holds the supports to "
            "explain against)"
        )
    if method not in REGISTRY:
        raise ValueError(f"method must be one of {sorted(REGISTRY)}, got {method!r}")
    member = REGISTRY[method]
    if model.metric not in member.supported_metrics:
        raise ValueError(
            f"method {method!r} supports metric {member.supported_metrics}, the "
            f"model uses {model.metric!r}"
        )
    if layer is None and model.layer_name is None:
        raise ValueError("layer is needed: pass layer= or build the model with one")
    name = (
        model.layer_name
        if layer is None
        else _layer_name(model.embedding_model, layer, "layer")
    )
    target_device = (
        torch.device(device) if device is not None else model.supports.device
    )
    x = torch.as_tensor(
        np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs
    )
    if not x.is_floating_point() or x.dim() != 4:
        raise ValueError(
            f"inputs must be floating point (B, C, H, W), got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    x = x.to(device=target_device, dtype=model.supports.dtype)
    y = _support_indices(targets, x.shape[0], model.num_classes)
    net = model.embedding_model
    explainer = member.cls(
        net, net.get_submodule(name), metric=model.metric, **(method_kwargs or {})
    )
    support = model.supports.to(target_device)[y.to(target_device)]  # (B, K, C, H, W)
    attr = explainer.attribute(x, support).detach()
    if upsample:
        attr = F.interpolate(
            attr.float(), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
    return attr.float().cpu().numpy()


def _support_indices(targets: Any, count: int, classes: int) -> Tensor:
    """(count,) int64 support indices from Quantus' targets: an array, a
    tensor, a list or one int for all; integral floats are accepted."""
    y = torch.as_tensor(
        np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
    )
    if y.dim() == 0:
        y = y.expand(count)
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError("targets must be support indices (integers)")
        y = y.round()
    y = y.long().flatten()
    if y.numel() != count:
        raise ValueError(
            f"targets must hold one index per input ({count}), got {y.numel()}"
        )
    if bool(((y < 0) | (y >= classes)).any()):
        raise ValueError(f"targets must lie in [0, {classes})")
    return y
