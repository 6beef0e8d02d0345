r"""Checkpoints for ``--weights``: read a state dict safely, load it or say why not.

:func:`read_state_dict` reads with ``torch.load(weights_only=True)`` (no code
from the file runs) and unwraps the usual nestings and prefixes;
:func:`load_weights` loads it into a model and words every mismatch (missing,
unexpected and misshapen keys) in one :class:`~captum_sfam.app.errors.CLIError`.
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import torch
from torch import Tensor
from torch.nn import Module

from .errors import CLIError, one_line, shorten

PathLike = Union[str, Path]

#: the keys under which training scripts nest a state dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
#: prefixes added by DataParallel / DistributedDataParallel / torch.compile
STATE_DICT_PREFIXES = ("module.", "_orig_mod.")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _load_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a file that exists; a pickled
    object, a TorchScript archive or an unreadable file is a CLIError."""
    if _is_torchscript(path):
        raise CLIError(
            f"{path} is a TorchScript model, which cannot take forward hooks: "
            "pass its state dict with --weights (torch.save(model.state_dict(), "
            "file)) and the architecture with --model"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
        raise CLIError(f"cannot read weights {path}: {one_line(error)}") from error


def _unwrap(state: Any) -> Any:
    """The state dict nested (up to three deep) under :data:`STATE_DICT_KEYS`."""
    for _ in range(3):
        if not isinstance(state, dict):
            break
        nested = [k for k in STATE_DICT_KEYS if isinstance(state.get(k), dict)]
        if not nested or all(isinstance(v, Tensor) for v in state.values()):
            break
        state = state[nested[0]]
    return state


def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    r"""Reads a state dict with ``torch.load(weights_only=True)``.

    Checkpoints that nest it under ``"state_dict"``, ``"model_state_dict"`` or
    ``"model"`` are unwrapped, and the ``"module."`` (DataParallel, DDP) and
    ``"_orig_mod."`` (``torch.compile``) prefixes are removed.

    Args:
        path (str or Path): the checkpoint file.

    Returns:
        the state dict, name -> tensor.

    Raises:
        CLIError: no such file, a TorchScript archive, a pickled object, an
                    unreadable file, or no tensors where a state dict belongs.
    """
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"no such weights file: {path}")
    state = _unwrap(_load_file(path))
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
            f"{shorten(list(map(str, state)))}); the state dict was not found"
        )
    for prefix in STATE_DICT_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def _mismatches(state: Dict[str, Tensor], expected: Dict[str, Tensor]) -> List[str]:
    """What keeps ``state`` from loading into a model with ``expected``."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {shorten(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (checkpoint vs model): {shorten(shapes, 3)}")
    return problems


def load_weights(
    model: Module,
    path: PathLike,
    model_name: str,
    ignore: Sequence[str] = (),
) -> None:
    r"""Loads a checkpoint into ``model``; a mismatch is a one-line error.

    Dropped keys (``ignore``) are reported in a note on stderr.

    Args:
        model (Module): the architecture.
        path (str or Path): the checkpoint (see :func:`read_state_dict`).
        model_name (str): the name used in messages.
        ignore (sequence of str): prefixes of checkpoint keys to drop (the
                    classifier replaced by the identity).

    Raises:
        CLIError: the checkpoint cannot be read (:func:`read_state_dict`) or
                    does not fit ``model``.
    """
    state = read_state_dict(path)
    dropped = [k for k in state if any(k.startswith(p) for p in ignore)]
    state = {k: v for k, v in state.items() if k not in dropped}
    problems = _mismatches(state, model.state_dict())
    if problems:
        raise CLIError(f"{path} does not fit {model_name}: " + "; ".join(problems))
    try:
        model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - anything the module refuses
        raise CLIError(
            f"{path} does not fit {model_name}: {one_line(error)}"
        ) from error
    if dropped:
        print(
            f"captum-sfam: note: dropped the checkpoint's classifier "
            f"({shorten(dropped, 3)}); the model returns the features before "
            "it. To keep a trained embedding head, build the model with "
            "--model package.module:callable",
            file=sys.stderr,
        )


__all__ = ["load_weights", "read_state_dict"]
