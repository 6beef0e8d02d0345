r"""Models, checkpoints and images for the command line.

Everything the ``captum-sfam`` subcommands need to turn command-line arguments
into an embedding model, a layer, an attribution method and model inputs:

- :func:`add_model_arguments` adds ``--model``, ``--weights``, ``--layer``,
  ``--method``, ``--metric``, ``--size`` (and ``--mean``/``--std``) to a parser;
- :func:`model_from_args` builds a :class:`Loaded` from the parsed arguments;
- :func:`load_image` reads an image file (8/16-bit, palette, CMYK, grey,
  with or without alpha) into a ``(3, H, W)`` tensor in [0, 1];
- :func:`find_images` lists the image files of a folder;
- :class:`CLIError` is the error every subcommand reports in one line.

``--model`` is ``efficientnet_lite0`` (offline), a torchvision model name
(its classifier is replaced by the identity), or a user's factory
``package.module:callable`` / ``path/to/file.py:callable`` that returns the
embedding model as it is (a trained embedding head is kept).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from ..methods import REGISTRY, PairAttribution

PathLike = Union[str, Path]

#: input size of the default model, and the default ``--size``
INPUT_SIZE = 224
#: ImageNet normalisation (torchvision models, and factories by default)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the normalisation of the offline EfficientNet-Lite0 (inputs in [-1, 1])
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
#: the layer explained when ``--layer`` is not given, per model name
DEFAULT_LAYERS = {"efficientnet_lite0": "bn2"}
#: file extensions :func:`find_images` lists (lower case)
IMAGE_EXTENSIONS = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
#: the keys under which training scripts nest a state dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
#: prefixes added by DataParallel / DistributedDataParallel / torch.compile
STATE_DICT_PREFIXES = ("module.", "_orig_mod.")
#: module names a torchvision classifier head goes by
CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")


class CLIError(Exception):
    """An error the command line reports in one line (exit code 2)."""


@dataclass
class Loaded:
    r"""What :func:`model_from_args` builds from the command line.

    Attributes:
        model (Module): the embedding model, images -> (B, D), in eval mode.
        layer (Module): the layer to explain, a submodule of ``model``.
        method (PairAttribution): the attribution method (a member of
                    :data:`captum_sfam.methods.REGISTRY`) on ``model``/``layer``.
        metric (str): ``"cosine"`` or ``"euclidean"``.
        preprocess (Callable): image file -> (3, H, W) model input, resized
                    and normalised with ``mean``/``std``.
        mean, std (tuple of 3 floats): the normalisation ``preprocess`` applies
                    (pass them to the figures to show the images as they are).
    """

    model: Module
    layer: Module
    method: PairAttribution
    metric: str
    preprocess: Callable[[PathLike], Tensor]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


# --------------------------------------------------------- arguments -------
def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {value!r}"
        ) from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {number}")
    return number


def _method_key(value: str) -> str:
    if value not in REGISTRY:
        raise argparse.ArgumentTypeError(
            f"unknown method {value!r}: one of {', '.join(REGISTRY)}"
        )
    return value


def _metric_name(value: str) -> str:
    if value not in ("cosine", "euclidean"):
        raise argparse.ArgumentTypeError(
            f"unknown metric {value!r}: cosine or euclidean"
        )
    return value


def _three_floats(value: str) -> Tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        numbers = ()
    if len(numbers) == 1:
        numbers = numbers * 3
    if len(numbers) != 3:
        raise argparse.ArgumentTypeError(
            f"expected 1 or 3 numbers such as 0.485,0.456,0.406, got {value!r}"
        )
    return numbers  # type: ignore[return-value]


def _positive_floats(value: str) -> Tuple[float, float, float]:
    numbers = _three_floats(value)
    if any(not n > 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
    return numbers


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    r"""Adds the options that choose the model, layer, method and input size.

    ``--model``, ``--weights``, ``--layer``, ``--method``, ``--metric``,
    ``--size``, ``--mean`` and ``--std``; :func:`model_from_args` reads them.
    Bad values (unknown method or metric, a size that is not positive) are
    argparse errors (exit code 2).

    Args:
        parser (argparse.ArgumentParser): the (sub)command's parser.
    """
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="efficientnet_lite0 (offline, default), a torchvision model name "
        "(its classifier is replaced by the identity), or a factory returning "
        "your embedding model: package.module:callable or path/to/file.py:callable",
    )
    group.add_argument(
        "--weights",
        help="state dict to load into the model (weights_only load; nested under "
        "'state_dict'/'model'/'model_state_dict' and 'module.' prefixes accepted)",
    )
    group.add_argument(
        "--layer", help="dotted name of the layer to explain (default: bn2/layer4)"
    )
    group.add_argument(
        "--method",
        default="sfam",
        type=_method_key,
        help=f"attribution method: {', '.join(REGISTRY)} (default: sfam)",
    )
    group.add_argument(
        "--metric",
        default="cosine",
        type=_metric_name,
        help="cosine (default) or euclidean",
    )
    group.add_argument(
        "--size",
        type=_positive_int,
        default=INPUT_SIZE,
        help=f"images are resized to SIZE x SIZE pixels (default: {INPUT_SIZE})",
    )
    group.add_argument(
        "--mean",
        type=_three_floats,
        help="normalisation mean, 3 numbers (default: the model's; ImageNet's for "
        "torchvision models and factories)",
    )
    group.add_argument(
        "--std", type=_positive_floats, help="normalisation std, 3 numbers"
    )
    group.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "channels_first", "channels_last", "tokens"],
        help="layout of the layer's activations (default: detected: ViT tokens "
        "laid on the patch grid, channels-last Swin layers recognised)",
    )
    group.add_argument(
        "--prefix-tokens",
        type=_non_negative_int,
        default=None,
        help="class/register tokens before a ViT's patch tokens (default: read "
        "from the model)",
    )
    group.add_argument(
        "--embedding-key",
        default=None,
        help="for models returning a dict, tuple or ModelOutput: the key (or "
        "index) of the embedding (the printed similarity, cgram and gradfam)",
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# ------------------------------------------------------------ models -------
def _require_torchvision() -> None:
    if importlib.util.find_spec("torchvision") is None:
        raise CLIError(
            "torchvision is needed for this: pip install 'captum-sfam[demo]'"
        )


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


def load_factory(spec: str) -> Module:
    r"""Calls a user's factory ``package.module:callable`` or ``file.py:callable``.

    Args:
        spec (str): the module (importable, or a path to a ``.py`` file) and
                    the name of a callable in it, separated by ``:``; the
                    callable takes no argument and returns the embedding model.

    Returns:
        the model the factory returns, unchanged (no classifier is stripped).
    """
    target, _, attr = spec.rpartition(":")
    path = Path(target)
    if target.endswith(".py") or path.suffix == ".py" or "/" in target:
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
                f"--model {spec}: importing {target} raised {_one_line(error)}"
            ) from error
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise CLIError(
                f"--model {spec}: no module named {error.name or target!r} (is "
                "its folder on PYTHONPATH?)"
            ) from error
        except Exception as error:  # noqa: BLE001 - the user's code
            raise CLIError(
                f"--model {spec}: importing {target} raised {_one_line(error)}"
            ) from error
    factory = getattr(module, attr, None)
    if factory is None:
        raise CLIError(f"--model {spec}: {target} has no attribute {attr!r}")
    if not callable(factory):
        raise CLIError(f"--model {spec}: {attr} is not callable")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - the user's code
        raise CLIError(f"--model {spec}: {attr}() raised {_one_line(error)}") from error
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


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _shorten(names: Sequence[str], limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    r"""Reads a state dict with ``torch.load(weights_only=True)``.

    Checkpoints that nest it under ``"state_dict"``, ``"model_state_dict"`` or
    ``"model"`` are unwrapped, and the ``"module."`` (DataParallel, DDP) and
    ``"_orig_mod."`` (``torch.compile``) prefixes are removed.

    Args:
        path (str or Path): the checkpoint file.

    Returns:
        the state dict, name -> tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"no such weights file: {path}")
    if _is_torchscript(path):
        raise CLIError(
            f"{path} is a TorchScript model, which cannot take forward hooks: "
            "pass its state dict with --weights (torch.save(model.state_dict(), "
            "file)) and the architecture with --model"
        )
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CLIError(
            f"{path} holds a pickled Python object{what}, not a state dict; "
            "whole models saved with torch.save(model) are not loaded (that "
            "would run code from the file): save model.state_dict() instead, "
            "or build the model with --model package.module:callable"
        ) from error
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise CLIError(f"cannot read weights {path}: {_one_line(error)}") from error
    for _ in range(3):
        if not isinstance(state, dict):
            break
        nested = [k for k in STATE_DICT_KEYS if isinstance(state.get(k), dict)]
        if not nested or all(isinstance(v, Tensor) for v in state.values()):
            break
        state = state[nested[0]]
    if isinstance(state, Module):  # pragma: no cover - refused by weights_only
        raise CLIError(f"{path} holds a whole model, not a state dict")
    if not isinstance(state, dict) or not state:
        raise CLIError(
            f"{path} holds {type(state).__name__}, not a state dict (a dict of "
            "tensors, possibly under 'state_dict' or 'model')"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CLIError(
            f"{path} holds no tensors at the top level (keys: "
            f"{_shorten(list(map(str, state)))}); the state dict was not found"
        )
    for prefix in STATE_DICT_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_weights(
    model: Module,
    path: PathLike,
    model_name: str,
    ignore: Sequence[str] = (),
) -> None:
    r"""Loads a checkpoint into ``model``; a mismatch is a one-line error.

    Args:
        model (Module): the architecture.
        path (str or Path): the checkpoint (see :func:`read_state_dict`).
        model_name (str): the name used in messages.
        ignore (sequence of str): prefixes of checkpoint keys to drop (the
                    classifier replaced by the identity).
    """
    state = read_state_dict(path)
    dropped = [k for k in state if any(k.startswith(p) for p in ignore)]
    state = {k: v for k, v in state.items() if k not in dropped}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shorten(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (checkpoint vs model): {_shorten(shapes, 3)}")
    if problems:
        raise CLIError(f"{path} does not fit {model_name}: " + "; ".join(problems))
    try:
        model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - anything the module refuses
        raise CLIError(
            f"{path} does not fit {model_name}: {_one_line(error)}"
        ) from error
    if dropped:
        print(
            f"captum-sfam: note: dropped the checkpoint's classifier "
            f"({_shorten(dropped, 3)}); the model returns the features before "
            "it. To keep a trained embedding head, build the model with "
            "--model package.module:callable",
            file=sys.stderr,
        )


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
    """
    if name == "efficientnet_lite0":
        if weights:
            raise CLIError(
                "--weights does not apply to efficientnet_lite0 (its weights "
                "ship with it): pass a torchvision model name or a factory"
            )
        from ..demo.pretrained import efficientnet_lite0

        try:
            return efficientnet_lite0(embedding=True), LITE0_MEAN, LITE0_STD
        except ImportError as error:
            raise CLIError(str(error)) from error
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
    _require_torchvision()
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
    else:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as error:  # noqa: BLE001 - the download's many failures
            raise CLIError(
                f"could not download the pretrained weights of {name} (no "
                f"internet?): {type(error).__name__}. Pass --weights FILE, or use "
                "the offline default --model efficientnet_lite0"
            ) from error
        _strip_classifier(model)
    return model.eval(), IMAGENET_MEAN, IMAGENET_STD


def _model_normalisation(
    model: Module,
) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
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


def resolve_layer(model: Module, model_name: str, layer: Optional[str]) -> Module:
    r"""The layer named by ``--layer`` (default: ``bn2`` or ``layer4``).

    Args:
        model (Module): the embedding model.
        model_name (str): the ``--model`` value, for the default and messages.
        layer (str, optional): a dotted submodule name.

    Returns:
        the submodule.
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


def embedding_key(args: argparse.Namespace) -> Union[None, str, int]:
    """``--embedding-key`` as an ``embedding_func``: an int index or a key."""
    key = getattr(args, "embedding_key", None)
    if key is None:
        return None
    return int(key) if key.lstrip("-").isdigit() else key


def _layout_kwargs(args: argparse.Namespace, model: Module, layer: Module) -> dict:
    """Keyword arguments describing the layer's layout (tokens, channels-last)
    and, for the gradient members, where the embedding is in the output."""
    kwargs: Dict[str, Any] = {
        "layout": getattr(args, "layout", "auto"),
        "num_prefix_tokens": getattr(args, "prefix_tokens", None),
    }
    key = embedding_key(args)
    if key is not None and args.method in REGISTRY:
        if not REGISTRY[args.method].forward_only:
            kwargs["embedding_func"] = key
    return kwargs


def build_method(
    method: str, model: Module, layer: Module, metric: str, **kwargs: Any
) -> PairAttribution:
    r"""Constructs a registry member on ``model`` and ``layer``.

    Args:
        method (str): a key of :data:`captum_sfam.methods.REGISTRY`.
        model, layer (Module): the embedding model and the explained layer.
        metric (str): ``"cosine"`` or ``"euclidean"``.
        **kwargs: passed to the member's constructor.

    Returns:
        the attribution object.
    """
    if method not in REGISTRY:
        raise CLIError(f"unknown method {method!r}: one of {', '.join(REGISTRY)}")
    member = REGISTRY[method]
    if metric not in member.supported_metrics:
        metrics = " or ".join(f"--metric {m}" for m in member.supported_metrics)
        raise CLIError(f"{method} is defined for {metrics} only")
    try:
        return member.cls(model, layer, metric=metric, **kwargs)
    except (ValueError, TypeError) as error:
        raise CLIError(f"{method}: {_one_line(error)}") from error


def model_from_args(args: argparse.Namespace) -> Loaded:
    r"""The model, layer, method and preprocessing chosen on the command line.

    Args:
        args (argparse.Namespace): parsed arguments of a parser given to
                    :func:`add_model_arguments`.

    Returns:
        a :class:`Loaded`.
    """
    model, mean, std = load_model(args.model, args.weights)
    mean = tuple(getattr(args, "mean", None) or mean)
    std = tuple(getattr(args, "std", None) or std)
    layer = resolve_layer(model, args.model, args.layer)
    method = build_method(
        args.method, model, layer, args.metric, **_layout_kwargs(args, model, layer)
    )
    size = args.size

    def preprocess(path: PathLike) -> Tensor:
        return normalize(load_image(path, size), mean, std)

    return Loaded(model, layer, method, args.metric, preprocess, mean, std)


# ------------------------------------------------------------ images -------
def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(image - mean) / std`` per channel, for (3, H, W) or (B, 3, H, W)."""
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - m) / s


def _to_rgb_array(img: Any) -> Any:
    """A Pillow image of any mode -> float32 numpy (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "I":
            # 16-bit PNGs open as mode I; wider integers use their own range
            scale = 65535.0 if array.max(initial=0) <= 65535 else 2.0**31 - 1
        else:
            top = float(array.max(initial=0))
            scale = top if top > 1.0 else 1.0
        grey = np.clip(array / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return array


def load_image(path: PathLike, size: int = INPUT_SIZE) -> Tensor:
    r"""Reads an image file into a (3, size, size) tensor in [0, 1].

    8-bit and 16-bit (scaled by 65535) greyscale, palette, CMYK and RGB
    images are converted to RGB; transparent pixels (alpha, palette
    transparency) are composited on white, as a viewer shows them; the EXIF
    orientation is applied. The image is resized to ``size x size``
    (bilinear, antialiased), not normalised.

    Args:
        path (str or Path): the image file (any format Pillow reads).
        size (int): the side of the output, in pixels. Default: 224

    Returns:
        Tensor (3, size, size), float32 in [0, 1].
    """
    if importlib.util.find_spec("PIL") is None:
        raise CLIError("pillow is needed for this: pip install 'captum-sfam[demo]'")
    from PIL import Image, ImageOps

    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise CLIError(f"image size must be a positive whole number, got {size!r}")
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"no such image file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            array = _to_rgb_array(img)
    except Exception as error:  # noqa: BLE001 - Pillow's many failures
        raise CLIError(f"cannot read image {path}: {_one_line(error)}") from error
    x = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x[0].clamp(0.0, 1.0)


def find_images(folder: PathLike) -> List[Path]:
    r"""The image files under ``folder``, recursively, sorted by path.

    Args:
        folder (str or Path): a folder.

    Returns:
        list of Path: the files whose extension (any case) is in
        :data:`IMAGE_EXTENSIONS`; hidden files and folders are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CLIError(f"no such folder: {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


__all__ = [
    "CLIError",
    "INPUT_SIZE",
    "Loaded",
    "add_model_arguments",
    "build_method",
    "find_images",
    "load_image",
    "load_model",
    "model_from_args",
    "normalize",
    "read_state_dict",
    "resolve_layer",
]
