r"""The modules and callables a :class:`~captum_sfam.image_text.TwoTower`
hands the members: a tower as a module, the model's own score as a metric."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn


class ModelScore:
    r"""Row-wise score :math:`t \cos(a_p, b_p) + b` of two (..., D) batches."""

    #: embeddings of one width (checked by the members, naming the argument)
    requires_same_width = True

    def __init__(self, logit_scale: float, logit_bias: Optional[float]) -> None:
        self.logit_scale, self.logit_bias = logit_scale, logit_bias

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        cos = nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
        s = self.logit_scale * cos
        return s if self.logit_bias is None else s + self.logit_bias

    def __repr__(self) -> str:
        bias = "" if self.logit_bias is None else f" + {self.logit_bias:.4g}"
        return f"ModelScore({self.logit_scale:.4g} * cos{bias})"


class Tower(nn.Module):
    """One tower of a two-tower model as a module: ``call(model, x)`` -> the
    (B, D) embedding, a ``ModelOutput``'s ``pooler_output`` read (transformers
    5 returns one from ``get_image_features``/``get_text_features``, 4 a
    tensor). ``num_prefix_tokens`` and ``patch_size`` are read by the
    members."""

    def __init__(self, model: nn.Module, call: Callable[..., Any], **attributes):
        super().__init__()
        self.model, self._call = model, call
        for key, value in attributes.items():
            setattr(self, key, value)

    def forward(self, x: Tensor) -> Tensor:
        out = self._call(self.model, x)
        if isinstance(out, Tensor):
            return out
        pooled = getattr(out, "pooler_output", None)
        if isinstance(pooled, Tensor):
            return pooled
        if isinstance(out, (tuple, list)) and isinstance(out[0], Tensor):
            return out[0]
        raise TypeError(f"the tower returned a {type(out).__name__}, not an embedding")
