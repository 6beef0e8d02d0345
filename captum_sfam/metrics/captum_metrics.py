r"""Captum's faithfulness metrics, ``infidelity`` and ``sensitivity_max``, on
pair maps.

Both metrics take attributions of the inputs' form; the family's maps (and
``LayerGradCam``'s) are one tensor at the layer's resolution, (B, 1, h, w):

- ``captum.metrics.infidelity`` asserts that attributions and inputs have the
  same shape: :func:`input_resolution` upsamples a map to the inputs' size
  and repeats it over their channels.
- ``captum.metrics.sensitivity_max`` calls its ``explanation_func`` with the
  inputs as a tuple and iterates over the explanation as a tuple of tensors;
  a single map tensor is iterated along its batch and the subtraction fails
  (``The size of tensor a (20) must match the size of tensor b (10)``).
  :func:`explanation_func` adapts any ``attribute`` (a member's, or a Captum
  method's through a ``SimilarityTarget``).

Captum expands ``target``, ``additional_forward_args`` and ``baselines``
along with the perturbed inputs; it leaves every other keyword, ``support``
and ``contrast`` included, as it is. A shared support (K, C, H, W) therefore
serves every perturbed query; per-query supports go as R references with
``target=`` (see docs/evaluation.md).
"""

from __future__ import annotations

from typing import Any, Callable, Tuple, Union

from torch import Tensor

from ..transforms import interpolate

Inputs = Union[Tensor, Tuple[Tensor, ...]]


def input_resolution(
    attributions: Tensor, inputs: Tensor, mode: str = "bilinear"
) -> Tensor:
    r"""Maps (B, 1, h, w) at a layer's resolution as attributions of
    ``inputs`` (B, C, H, W), the shape ``captum.metrics.infidelity`` asserts:
    upsampled to (H, W) (bilinearly, as the SFAM paper and
    ``LayerAttribution.interpolate``) and repeated over the C channels.

    The repeat counts each pixel's value once per channel in
    infidelity's dot product with the perturbation; the family's maps have
    no unit, so pass ``normalize=True`` to ``infidelity`` (it rescales the
    attributions by the best factor).

    Args:
        attributions (Tensor): maps (B, 1, h, w) (or (B, C, h, w)).
        inputs (Tensor): the explained inputs (B, C, H, W).
        mode (str, optional): as ``torch.nn.functional.interpolate``.
                    Default: "bilinear"

    Returns:
        *Tensor*: (B, C, H, W) attributions, of ``inputs``' shape.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError("inputs must be a (B, C, H, W) Tensor")
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        raise ValueError(
            "attributions must be (B, 1, h, w) maps, got "
            f"{getattr(attributions, 'shape', type(attributions).__name__)}"
        )
    if attributions.shape[0] != inputs.shape[0] or attributions.shape[1] not in (
        1,
        inputs.shape[1],
    ):
        raise ValueError(
            f"attributions {tuple(attributions.shape)} do not fit inputs "
            f"{tuple(inputs.shape)}: expected (B, 1, h, w) or (B, C, h, w)"
        )
    up = interpolate(attributions, tuple(inputs.shape[-2:]), mode)
    return up.expand(-1, inputs.shape[1], -1, -1).contiguous()


def explanation_func(
    attribute: Callable[..., Tensor], upsample: bool = False, **fixed: Any
) -> Callable[..., Tuple[Tensor, ...]]:
    r"""``attribute`` as ``captum.metrics.sensitivity_max``'s
    ``explanation_func``.

    The returned function takes the inputs as Captum passes them (a tensor or
    a tuple of one), calls ``attribute(inputs, **fixed, **kwargs)`` and
    returns the map as a tuple of one tensor, which ``sensitivity_max``
    compares map to map. ``fixed`` keywords (a shared ``support``, a
    ``contrast``) are closed over: Captum never sees them, so they are used as
    given for every perturbed input. Keywords given to ``sensitivity_max``
    reach ``attribute`` too, after Captum's expansion (``target`` repeated
    with the inputs: the way to give each query its own support, as
    references with ``target=``).

    Args:
        attribute (Callable): a member's ``attribute``, or a Captum method's
                    (``LayerGradCam(SimilarityTarget(...), layer).attribute``).
        upsample (bool, optional): return the map upsampled to the inputs'
                    size and repeated over their channels
                    (:func:`input_resolution`).
                    Default: False (the layer's resolution)
        **fixed: keywords for every call of ``attribute``.

    Returns:
        *Callable*: ``f(inputs, **kwargs) -> (map,)``.

    Examples::

        >>> sens = sensitivity_max(explanation_func(sfam.attribute, support=s), q)
    """
    if not callable(attribute):
        raise TypeError("attribute must be callable")

    def explain(inputs: Inputs, **kwargs: Any) -> Tuple[Tensor, ...]:
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise ValueError(
                    f"explanation_func explains one input tensor, got {len(inputs)}"
                )
            inputs = inputs[0]
        maps = attribute(inputs, **fixed, **kwargs)
        if isinstance(maps, tuple):  # already Captum's tuple form
            return maps
        if upsample:
            maps = input_resolution(maps, inputs)
        return (maps,)

    return explain


__all__ = ["explanation_func", "input_resolution"]
