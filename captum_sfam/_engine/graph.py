r"""Stage 2 for queries against embeddings: one forward pass of the queries
with autograd, the tensors of one or several layers kept in the graph, and
the gradients of many scores from few backward passes.

:func:`query_graph` runs the queries once (hooks on every layer, removed at
the end of the pass, buffers restored); :func:`batched_gradients` takes the
gradients of R score columns at once (``torch.autograd.grad(...,
is_grads_batched=True)``, in chunks of ``chunk_size`` columns; a plain loop
over the columns when the model has an operation ``vmap`` cannot batch).
Every query only influences its own row of the scores when the model is
batch-independent (eval mode), so column r's gradient at query q's
activations is that of the pair (q, r).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .checks import select_embedding
from .layer import Layer, _first_call_hook
from .model import EmbeddingFunc
from .pairs import Images


@contextmanager
def query_graph(
    layers: Sequence[Layer],
    images: Images,
    args: Any,
    to_input: bool,
    embedding_func: EmbeddingFunc,
) -> Iterator[Tuple[List[Tensor], Tensor]]:
    """One forward pass of ``images`` with autograd (even under
    ``no_grad``/``inference_mode``): yields the tensors of each layer's first
    call (in the graph) and the (B, D) embeddings; hooks are removed after
    the pass, the buffers of train-mode modules restored at the end."""
    first = layers[0]
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(first._protected())
        stores: List[Dict[torch.device, Images]] = []
        batch = tuple(t.clone() if t.is_inference() else t for t in images)
        with ExitStack() as hooks:
            for layer in layers:
                store: Dict[torch.device, Images] = {}
                stores.append(store)
                hook = _first_call_hook(store, to_input)
                hooks.enter_context(layer._hooked(hook, to_input, "inputs"))
            output = first.forward_func(*batch, *(args or ()))
        captured = []
        for layer, store in zip(layers, stores):
            tensors = layer._in_batch_order(store)
            if len(tensors) != 1:
                raise ValueError(
                    f"the layer gives {len(tensors)} tensors; pair attributions "
                    "need a layer with a single tensor output (or input)"
                )
            captured.append(tensors[0])
        yield captured, select_embedding(output, embedding_func, True)


def batched_gradients(
    scores: Tensor,
    inputs: List[Tensor],
    chunk_size: Optional[int] = None,
) -> Iterator[Tuple[slice, List[Tensor]]]:
    """Gradients of each column of ``scores`` (B, R) with respect to
    ``inputs`` (each (B, ...)): yields (columns, [(r, B, ...) per input])
    chunk by chunk. One batched backward pass per chunk of ``chunk_size``
    columns (all at once by default); if the model has an operation that
    cannot be batched this way, one backward pass per column."""
    count = scores.shape[1]
    step = chunk_size or count
    eye = torch.eye(count, dtype=scores.dtype, device=scores.device)
    batched = True
    for start in range(0, count, step):
        cols = slice(start, min(start + step, count))
        seeds = eye[cols].unsqueeze(1).expand(-1, scores.shape[0], count)
        grads: Optional[Tuple[Optional[Tensor], ...]] = None
        if batched and seeds.shape[0] > 1:
            try:
                grads = torch.autograd.grad(
                    scores, inputs, seeds, retain_graph=True,
                    allow_unused=True, is_grads_batched=True,
                )  # fmt: skip
            except (RuntimeError, NotImplementedError):
                batched = False  # an operation vmap cannot batch: loop
        if grads is None:
            each = [
                torch.autograd.grad(
                    scores, inputs, seed, retain_graph=True, allow_unused=True
                )
                for seed in seeds
            ]
            grads = tuple(
                None if parts[0] is None else torch.stack(parts) for parts in zip(*each)
            )
        yield (
            cols,
            [
                torch.zeros(seeds.shape[0], *t.shape, dtype=t.dtype, device=t.device)
                if g is None
                else g.detach()
                for t, g in zip(inputs, grads)
            ],
        )


def as_grid(layer: Layer, tensor: Tensor, images: Images, stacked: bool) -> Tensor:
    """A layer's tensor (B, ...) as (B, N, h, w), or with ``stacked`` a stack
    of its gradients (r, B, ...) as (r, B, N, h, w), on the queries' device."""
    tensor = tensor.detach().to(images[0].device)
    if not stacked:
        return layer.grid((tensor,), tuple(images[0].shape))
    flat = tensor.flatten(0, 1)
    grid = layer.grid((flat,), (flat.shape[0], *images[0].shape[1:]))
    return grid.reshape(*tensor.shape[:2], *grid.shape[1:])
