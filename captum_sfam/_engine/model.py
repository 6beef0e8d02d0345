r"""What the library knows about a user's model: one place for every member.

- which modules ``forward_func`` runs (a module, a bound method, a
  ``functools.partial``, a closure or a lambda over a global model), so that
  buffers are protected whatever the callable;
- which part of the model's output is the embedding (tensor, dict, tuple,
  Hugging Face ``ModelOutput``), via ``embedding_func``;
- the layout of the explained layer's activations: (B, N, h, w),
  channels-last (B, H, W, N) or tokens (B, T, N), detected from the layer's
  own parameters and the model's attributes, or declared with ``layout``;
- how many prefix tokens (class, register, distillation) a vision transformer
  puts before its patch tokens (timm's ``num_prefix_tokens``, the Hugging Face
  config, torchvision's ``class_token``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from .checks import warn

#: how the embedding is read from a model output: None (the output is the
#: embedding), a key (dict key or ``ModelOutput`` field), an index (tuple) or
#: a callable mapping the output to (B, D)
EmbeddingFunc = Union[None, str, int, Callable[[Any], Tensor]]

LAYOUTS = ("auto", "channels_first", "channels_last", "tokens")


# ------------------------------------------------------------ the modules ---
def _candidates(obj: Any, depth: int = 0) -> Iterator[Module]:
    """Modules reachable from a callable: itself, a bound method's owner, a
    partial's function and arguments, closure cells and referenced globals."""
    if depth > 3 or obj is None:
        return
    if isinstance(obj, Module):
        yield obj
        return
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, Module):
        yield owner
    elif owner is not None and hasattr(owner, "__dict__"):
        # a bound method of a wrapper holding modules (pytorch-metric-
        # learning's InferenceModel(trunk, embedder), easyfsl's classifiers)
        for value in vars(owner).values():
            if isinstance(value, Module):
                yield value
    if isinstance(obj, functools.partial):
        yield from _candidates(obj.func, depth + 1)
        for value in (*obj.args, *obj.keywords.values()):
            yield from _candidates(value, depth + 1)
    wrapped = getattr(obj, "__wrapped__", None)
    if wrapped is not None:
        yield from _candidates(wrapped, depth + 1)
    code = getattr(obj, "__code__", None)
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        yield from _candidates(value, depth + 1)
    if code is not None:
        namespace = getattr(obj, "__globals__", {})
        for name in code.co_names:
            value = namespace.get(name)
            if isinstance(value, Module) or hasattr(value, "__code__"):
                yield from _candidates(value, depth + 1)


def held_modules(forward_func: Callable[..., Any]) -> List[Module]:
    """Every distinct module ``forward_func`` holds (see :func:`_candidates`)."""
    seen: Dict[int, Module] = {}
    for module in _candidates(forward_func):
        seen.setdefault(id(module), module)
    return list(seen.values())


def find_model(
    forward_func: Callable[..., Any], layer: Optional[Module] = None
) -> Optional[Module]:
    """The module ``forward_func`` runs: one that contains ``layer`` if any,
    else the first module found; None for a callable that holds no module."""
    seen, first = set(), None
    for module in _candidates(forward_func):
        if id(module) in seen:
            continue
        seen.add(id(module))
        if layer is None or any(m is layer for m in module.modules()):
            return module
        first = module if first is None else first
    return first if layer is None else None


# ------------------------------------------------------------ the output ----
def check_embedding_func(embedding_func: object) -> EmbeddingFunc:
    if embedding_func is None or callable(embedding_func):
        return embedding_func  # type: ignore[return-value]
    if isinstance(embedding_func, (str, int)) and not isinstance(embedding_func, bool):
        return embedding_func
    raise TypeError(
        "embedding_func must be None, a key (str), an index (int) or a callable, "
        f"got {type(embedding_func).__name__}"
    )


def warn_if_classifier(model: Optional[Module], embedding_func: EmbeddingFunc) -> None:
    """Warn when ``model`` still ends in a classifier head: its output are
    logits, which gradient members would use as the embedding."""
    if model is None or embedding_func is not None:
        return
    for name in ("fc", "classifier", "head", "heads"):
        head = getattr(model, name, None)
        if isinstance(head, Module) and _ends_in_classifier(head):
            warn(
                f"forward_func still has its classifier head (.{name}: "
                f"{type(head).__name__}), so its output are class logits, used "
                f"here as the embedding. Remove it (model.{name} = "
                "torch.nn.Identity()) or pass embedding_func= to select the "
                "embedding (pass embedding_func=lambda out: out to keep the "
                "logits and silence this warning)"
            )
            return


def _ends_in_classifier(head: Module) -> bool:
    last = [m for m in head.modules() if len(list(m.children())) == 0]
    final = last[-1] if last else head
    return isinstance(final, torch.nn.Linear) and final.out_features in (
        1000,
        1001,
        11221,
        11821,
        21841,
        21843,
    )  # ImageNet-1k, -21k, -21k-P


# ------------------------------------------------------------ the layout ----
def check_layout(layout: object) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def _count(module: Module) -> Optional[int]:
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, torch.nn.modules.batchnorm._NormBase):
        return module.num_features
    if isinstance(module, torch.nn.GroupNorm):
        return module.num_channels
    if isinstance(module, torch.nn.LayerNorm) and module.normalized_shape:
        return module.normalized_shape[-1]
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    return None


def channel_count(layer: Module, model: Optional[Module] = None) -> Optional[int]:
    """The channel count the layer's activations have, from parameters: the
    layer's last convolution, norm or linear submodule, or for a
    parameter-free layer (an activation, a pooling) the last such module the
    model registers before it."""
    counts = [c for c in map(_count, layer.modules()) if c is not None]
    if counts:
        return counts[-1]
    if model is None:
        return None
    count = None
    for module in model.modules():
        if module is layer:
            return count
        count = _count(module) or count
    return None


def prefix_tokens(model: Optional[Module]) -> Optional[int]:
    """Tokens before the patch tokens, read from the model, or None."""
    if model is None:
        return None
    count = getattr(model, "num_prefix_tokens", None)  # timm
    if isinstance(count, int):
        return count
    visual = getattr(model, "visual", None)  # open_clip CLIP: its image tower
    tower = visual if isinstance(visual, Module) else model
    if isinstance(getattr(tower, "class_embedding", None), Tensor):
        return 1  # open_clip's VisionTransformer: one class token
    trunk = getattr(tower, "trunk", None)  # open_clip's TimmModel (SigLIP)
    if isinstance(getattr(trunk, "num_prefix_tokens", None), int):
        return trunk.num_prefix_tokens
    config = getattr(model, "config", None)  # Hugging Face
    kind = getattr(config, "model_type", None)
    if isinstance(kind, str):
        if kind in ("swin", "swinv2", "convnext", "convnextv2") or kind.startswith(
            "siglip"
        ):
            return 0  # SigLIP pools with an attention head: no prefix token
        if kind in ("clip", "clip_vision_model", "clip_vision"):
            return 1
        extra = getattr(config, "num_register_tokens", 0) or 0
        distilled = 1 if kind == "deit" else 0
        if hasattr(model, "embeddings") or kind in ("vit", "dinov2", "deit"):
            return 1 + distilled + int(extra)
    if isinstance(getattr(model, "class_token", None), Tensor):  # torchvision
        return 1
    return None


def patch_size(model: Optional[Module]) -> Optional[Tuple[int, int]]:
    """The model's patch size, from timm's patch_embed or the HF config."""
    if model is None:
        return None
    visual = getattr(model, "visual", None)  # open_clip CLIP
    if isinstance(visual, Module):
        model = getattr(visual, "trunk", None) or visual  # TimmModel's trunk
    elif isinstance(getattr(model, "trunk", None), Module):
        model = model.trunk
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config  # HF CLIP/SigLIP
    if size is None:
        size = getattr(config, "patch_size", None)
    if size is None:
        size = getattr(model, "patch_size", None)  # torchvision
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, Sequence) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return None


def patch_grid(
    act: Tensor,
    prefix: Optional[int],
    image_shape: Optional[Sequence[int]],
    patch: Optional[Tuple[int, int]],
) -> Tensor:
    """(B, T, N) tokens -> (B, N, h, w) patch grid, after ``prefix`` tokens."""
    if prefix is None:
        raise ValueError(
            f"layer activations {tuple(act.shape)} are tokens (B, T, N) and the "
            "number of prefix tokens (class, register tokens) cannot be read "
            "from forward_func: pass num_prefix_tokens= (1 for a class token, "
            "1 + registers for DINOv2 with registers, 0 for Swin)"
        )
    count = act.shape[1] - prefix
    grid = tokens_grid(count, image_shape, patch)
    if grid is None:
        raise ValueError(
            f"{count} patch tokens (after {prefix} prefix tokens) do not form "
            "the patch grid: check num_prefix_tokens, or pass reshape_transform="
            "tokens_to_grid(num_prefix_tokens, grid_size=(h, w))"
        )
    patches = act[:, prefix:, :]
    return patches.transpose(1, 2).reshape(act.shape[0], act.shape[2], *grid)


def tokens_grid(
    count: int, image_shape: Optional[Sequence[int]], patch: Optional[Tuple[int, int]]
) -> Optional[Tuple[int, int]]:
    """(h, w) of ``count`` patch tokens: from the image size and the patch
    size when known, else the square grid; None when neither fits."""
    if image_shape is not None and patch is not None and len(image_shape) >= 2:
        h, w = image_shape[-2] // patch[0], image_shape[-1] // patch[1]
        if h * w == count:
            return h, w
    side = math.isqrt(count)
    if count > 0 and side * side == count:
        return side, side
    return None


def replicas_in_order(
    store: Dict[torch.device, Tuple[Tensor, ...]],
    device_ids: Optional[List[int]],
    root: Optional[Module],
) -> Tuple[Tensor, ...]:
    """Per-device captures of a ``DataParallel`` pass, concatenated in the
    order its replicas received the batch."""
    order = device_ids
    if order is None and isinstance(root, torch.nn.DataParallel):
        order = list(root.device_ids or [])
    devices = sorted(store, key=lambda d: (order or []).index(d.index)
                     if order and d.index in order else (d.index or 0))  # fmt: skip
    return tuple(torch.cat(parts) for parts in zip(*(store[d] for d in devices)))


def channels_last(act: Tensor, count: Optional[int], layout: str) -> bool:
    """Whether 4-D ``act`` is (B, H, W, N): declared by ``layout``, or
    detected when the parameters' channel ``count`` matches dim 3 and not
    dim 1. Shapes that look channels-last without that evidence raise."""
    if layout in ("channels_first", "channels_last"):
        return layout == "channels_last"
    if layout == "tokens":
        raise ValueError(
            f"layout='tokens' expects (B, T, N) activations, got {tuple(act.shape)}"
        )
    first, last = act.shape[1] == count, act.shape[3] == count
    if count is not None and first != last:
        return last
    if act.shape[1] == act.shape[2] and act.shape[3] != act.shape[1]:
        raise ValueError(
            f"layer activations {tuple(act.shape)} may be (B, N, h, w) or "
            "channels-last (B, H, W, N), and the layer's parameters do not tell: "
            "pass layout='channels_first' or layout='channels_last'"
        )
    return False


def forward_error(error: Exception, argument: str) -> Exception:
    """The error a failed forward pass is reported as, naming ``argument``
    (a Siamese model's missing second input is explained)."""
    if isinstance(error, TypeError):
        text = str(error)
        if "missing" in text and "required positional argument" in text:
            return TypeError(
                f"forward_func could not run on one batch of inputs ({text}). "
                "A Siamese model taking (x1, x2) cannot be explained as a whole: "
                "pass its embedding branch (e.g. model.embedding_net, "
                "model.backbone or a function x -> embedding) as forward_func, "
                "and its scoring head, if it has one, as metric= to the gradient "
                "members or to SimilarityTarget"
            )
        return error
    return ValueError(f"{argument}: forward_func cannot run on it: {error}")
