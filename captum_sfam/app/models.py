r"""The model and layer ``--model`` and ``--layer`` name.

``--model`` is ``efficientnet_lite0`` (offline), a torchvision model name
(its classifier is replaced by the identity), or a user's factory
``package.module:callable`` / ``path/to/file.py:callable`` that returns the
embedding model as it is (a trained embedding head is kept). Every failure is
a one-line :class:`~captum_sfam.app.errors.CLIError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional, Tuple, Union

import torch
from torch.nn import Module

from .checkpoints import load_weights
from .errors import CLIError, one_line

PathLike = Union[str, Path]
Normalisation = Tuple[Tuple[float, float, float], Tuple[float, float, float]]

#: ImageNet normalisation (torchvision models, and factories by default)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the layer explained when ``--layer`` is not given, per model name
DEFAULT_LAYERS = {"efficientnet_lite0": "bn2"}
#: module names a torchvision classifier head goes by
CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")


def _strip_classifier(model: Module) -> Optional[str]:
    """Replaces a torchvision classifier by the identity; returns its name."""
    for name in CLASSIFIER_NAMES:
        if isinstance(getattr(model, name, None), Module):
            setattr(model, name, torch.nn.Identity())
            return name
    return None


def is_factory(spec: str) -> bool:
    """True when ``--model`` names a factory (``module:callable``)."""
    if ":" not in spec:
        return False
    target, _, attr = spec.rpartition(":")
    return bool(target) and attr.isidentifier()


def _import_file(spec: str, target: str) -> ModuleType:
    """Executes the ``.py`` file ``target`` of a factory spec as a new module."""
    path = Path(target)
    if not path.is_file():
        raise CLIError(f"--model {spec}: no such file {target}")
    name = f"_captum_sfam_factory_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CLIError(f"--model {spec}: cannot import {target}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's code
        del sys.modules[name]
        raise CLIError(
            f"--model {spec}: importing {target} raised {one_line(error)}"
        ) from error
    return module


def _import_target(spec: str, target: str) -> ModuleType:
    """The module of a factory spec: a ``.py`` path or an importable name."""
    if target.endswith(".py") or Path(target).suffix == ".py" or "/" in target:
        return _import_file(spec, target)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        raise CLIError(
            f"--model {spec}: no module named {error.name or target!r} (is "
            "its folder on PYTHONPATH?)"
        ) from error
    except Exception as error:  # noqa: BLE001 - the user's code
        raise CLIError(
            f"--model {spec}: importing {target} raised {one_line(error)}"
        ) from error


def load_factory(spec: str) -> Module:
    r"""Calls a user's factory ``package.module:callable`` or ``file.py:callable``.

    Args:
        spec (str): the module (importable, or a path to a ``.py`` file) and
                    the name of a callable in it, separated by ``:``; the
                    callable takes no argument and returns the embedding model.

    Returns:
        the model the factory returns, unchanged (no classifier is stripped).

    Raises:
        CLIError: the module cannot be imported, has no such callable, the
                    call raises, or it returns no eager ``nn.Module``.
    """
    target, _, attr = spec.rpartition(":")
    module = _import_target(spec, target)
    factory = getattr(module, attr, None)
    if factory is None:
        raise CLIError(f"--model {spec}: {target} has no attribute {attr!r}")
    if not callable(factory):
        raise CLIError(f"--model {spec}: {attr} is not callable")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - the user's code
        raise CLIError(f"--model {spec}: {attr}() raised {one_line(error)}") from error
    if isinstance(model, torch.jit.ScriptModule):
        raise CLIError(
            f"--model {spec} returned a TorchScript module, which cannot take "
            "forward hooks: return the eager nn.Module"
        )
    if not isinstance(model, Module):
        raise CLIError(
            f"--model {spec}: {attr}() returned {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    return model


def _model_normalisation(model: Module) -> Normalisation:
    """timm's ``pretrained_cfg`` mean/std when the model has one, else ImageNet."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
            try:
                mean = tuple(float(v) for v in cfg["mean"])
                std = tuple(float(v) for v in cfg["std"])
            except (TypeError, ValueError):
                continue
            if len(mean) == 3 and len(std) == 3:
                return mean, std  # type: ignore[return-value]
    return IMAGENET_MEAN, IMAGENET_STD


def _efficientnet_lite0(weights: Optional[PathLike]) -> Tuple[Module, Normalisation]:
    """The offline EfficientNet-Lite0 of :mod:`captum_sfam.demo.pretrained`."""
    if weights:
        raise CLIError(
            "--weights does not apply to efficientnet_lite0 (its weights "
            "ship with it): pass a torchvision model name or a factory"
        )
    from ..demo import pretrained

    try:
        model = pretrained.efficientnet_lite0(embedding=True)
    except ImportError as error:
        raise CLIError(str(error)) from error
    return model, (pretrained.MEAN, pretrained.STD)


def _torchvision_model(name: str, weights: Optional[PathLike]) -> Module:
    """A torchvision architecture, its classifier replaced by the identity:
    with the checkpoint ``weights``, else torchvision's pretrained weights."""
    if importlib.util.find_spec("torchvision") is None:
        raise CLIError(
            "torchvision is needed for this: pip install 'captum-sfam[demo]'"
        )
    import torchvision

    if name not in torchvision.models.list_models():
        raise CLIError(
            f"unknown model {name!r}: use efficientnet_lite0, a torchvision "
            "model name (torchvision.models.list_models()) or a factory "
            "package.module:callable"
        )
    if weights:
        model = torchvision.models.get_model(name, weights=None)
        classifier = _strip_classifier(model)
        ignore = (f"{classifier}.",) if classifier else ()
        load_weights(model, weights, name, ignore=ignore)
        return model
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as error:  # noqa: BLE001 - the download's many failures
        raise CLIError(
            f"could not download the pretrained weights of {name} (no "
            f"internet?): {type(error).__name__}. Pass --weights FILE, or use "
            "the offline default --model efficientnet_lite0"
        ) from error
    _strip_classifier(model)
    return model


def load_model(
    name: str, weights: Optional[PathLike] = None
) -> Tuple[Module, Tuple[float, float, float], Tuple[float, float, float]]:
    r"""The embedding model named by ``--model``, in eval mode.

    Args:
        name (str): ``efficientnet_lite0``, a torchvision model name or a
                    factory ``package.module:callable`` / ``file.py:callable``.
        weights (str or Path, optional): a state dict to load.

    Returns:
        the model and the normalisation ``(mean, std)`` its inputs need.

    Raises:
        CLIError: an unknown model, a missing extra, a failing factory or
                    download, or weights that do not fit.
    """
    if name == "efficientnet_lite0":
        model, (mean, std) = _efficientnet_lite0(weights)
        return model, mean, std
    if is_factory(name):
        model = load_factory(name)
        if weights:
            load_weights(model, weights, name)
        mean, std = _model_normalisation(model)
        return model.eval(), mean, std
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ts", ".ckpt", ".bin") or path.exists():
        raise CLIError(
            f"--model {name}: pass a torchvision architecture name or a factory "
            "(package.module:callable) with --model and the state dict with "
            "--weights (TorchScript models cannot be hooked)"
        )
    return _torchvision_model(name, weights).eval(), IMAGENET_MEAN, IMAGENET_STD


#: ``--model`` prefixes of the two-tower models ``--text`` explains
TWO_TOWER_PREFIXES = ("open_clip:", "hf:", "demo:")
#: OpenAI CLIP's normalisation (open_clip's default, Hugging Face CLIP's)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_two_tower(name: str, weights: Optional[PathLike] = None):
    r"""The two-tower image–text model ``--model`` names, for ``--text``.

    Args:
        name (str): ``open_clip:ARCH[:PRETRAINED_TAG]`` (the tag downloads
                    open_clip's weights), ``hf:NAME_OR_FOLDER`` (Hugging Face
                    ``CLIPModel`` / ``SiglipModel`` with its tokenizer; a
                    name downloads) or ``demo:two-tower`` (the synthetic
                    model, offline).
        weights (str or Path, optional): a state dict loaded into the
                    architecture instead of downloaded weights.

    Returns:
        the :class:`~captum_sfam.image_text.TwoTower`, its input side in
        pixels and its normalisation ``(mean, std)``.

    Raises:
        CLIError: an unknown name, a missing extra, a failed download, weights
                    that do not fit, or an open_clip model with neither a tag
                    nor ``--weights`` (its random weights would explain
                    nothing).
    """
    kind, _, rest = name.partition(":")
    if kind == "demo":
        if rest != "two-tower":
            raise CLIError(
                f"--model {name}: the demo two-tower model is demo:two-tower"
            )
        from ..demo import two_tower as demo

        model = demo.trained_model()
        if weights:
            load_weights(model, weights, name)
        return demo.as_two_tower(model.eval()), demo.SIZE, (0.0,) * 3, (1.0,) * 3
    if kind == "open_clip":
        return _open_clip(name, rest, weights)
    if kind == "hf":
        return _hugging_face(name, rest, weights)
    raise CLIError(
        f"--text needs a two-tower model: --model open_clip:ARCH[:TAG], "
        f"hf:NAME or demo:two-tower, got {name!r}"
    )


def _open_clip(name: str, rest: str, weights: Optional[PathLike]):
    if importlib.util.find_spec("open_clip") is None:
        raise CLIError(
            "open_clip is needed for this: pip install 'captum-sfam[image-text]'"
        )
    import open_clip

    from ..image_text import two_tower

    arch, _, tag = rest.partition(":")
    if arch not in open_clip.list_models():
        raise CLIError(
            f"--model {name}: unknown open_clip architecture {arch!r} "
            "(open_clip.list_models())"
        )
    if weights:
        model = open_clip.create_model(arch, pretrained=None)
        load_weights(model, weights, name)
    elif tag:
        try:  # downloads (where there is internet)
            model = open_clip.create_model(arch, pretrained=tag)
        except Exception as error:  # noqa: BLE001 - the download's many failures
            raise CLIError(
                f"could not load the {tag} weights of {arch} (no internet, or "
                f"an unknown tag?): {one_line(error)}. Pass --weights FILE"
            ) from error
    else:
        raise CLIError(
            f"--model {name}: name the pretrained weights (open_clip:{arch}:TAG, "
            "see open_clip.list_pretrained()) or pass --weights FILE; a "
            "randomly initialised model explains nothing"
        )
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = model.visual.image_size
    side = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(cfg.get("mean", CLIP_MEAN))
    std = tuple(cfg.get("std", CLIP_STD))
    return two_tower(model.eval(), open_clip.get_tokenizer(arch)), side, mean, std


def _hugging_face(name: str, rest: str, weights: Optional[PathLike]):
    if importlib.util.find_spec("transformers") is None:
        raise CLIError("transformers is needed for this: pip install transformers")
    from transformers import AutoModel, AutoTokenizer

    from ..image_text import two_tower

    try:  # a folder loads offline; a hub name downloads
        model = AutoModel.from_pretrained(rest)
        tokenizer = AutoTokenizer.from_pretrained(rest)
    except Exception as error:  # noqa: BLE001 - the download's many failures
        raise CLIError(
            f"could not load {rest!r} with transformers (no internet, or not a "
            f"model name or folder?): {one_line(error)}"
        ) from error
    if weights:
        load_weights(model, weights, name)
    vision = getattr(model.config, "vision_config", None)
    side = int(getattr(vision, "image_size", 224))
    siglip = "siglip" in type(model).__name__.lower()
    mean, std = ((0.5,) * 3, (0.5,) * 3) if siglip else (CLIP_MEAN, CLIP_STD)
    return two_tower(model.eval(), tokenizer), side, mean, std


def resolve_layer(model: Module, model_name: str, layer: Optional[str]) -> Module:
    r"""The layer named by ``--layer`` (default: ``bn2`` or ``layer4``).

    Args:
        model (Module): the embedding model.
        model_name (str): the ``--model`` value, for the default and messages.
        layer (str, optional): a dotted submodule name.

    Returns:
        the submodule.

    Raises:
        CLIError: no layer given and no default, an empty name, or no such
                    submodule (the message lists the top-level modules).
    """
    name = layer if layer is not None else DEFAULT_LAYERS.get(model_name)
    children = ", ".join(n for n, _ in model.named_children())
    if name is None:
        if isinstance(getattr(model, "layer4", None), Module):
            name = "layer4"
        else:
            raise CLIError(
                f"--layer is needed for {model_name} (top-level modules: {children})"
            )
    if not name.strip():
        raise CLIError(f"--layer is empty (top-level modules: {children})")
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        raise CLIError(
            f"unknown layer {name!r} (top-level modules: {children})"
        ) from error


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TWO_TOWER_PREFIXES",
    "is_factory",
    "load_factory",
    "load_model",
    "load_two_tower",
    "resolve_layer",
]
