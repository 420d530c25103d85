"""Attention-based token selection for ``append`` (``append_selection=attention``): the image rows the prompt reads.

Pooling (the default) summarises the whole image; the seed's other open direction keeps instead the image rows that
the prompt's tokens attend to most, so a "red fox" prompt takes the patches Qwen3-VL itself looks at for it.

**Where.** At the chosen layer ``-n``: the self-attention inside decoder layer ``L - n``, the layer whose output is
the extracted hidden state (``engine.conditioning.text.forward_to_layers``; ``-1``: the last layer). It runs anyway:
:class:`AttentionProbe` is a forward pre-hook on that layer's ``self_attn`` that recomputes its scores from the same
input with the module's own ``q_proj``/``k_proj``/``q_norm``/``k_norm`` and rotary embedding (what
``eager_attention_forward`` computes; the fast SDPA kernels return no weights), for the prompt's rows only.

**What.** ``mass[j]`` = the softmax attention (causal, scaled by ``head_dim^-0.5``) from the prompt's tokens to image
row ``j``, averaged over heads and prompt tokens; a layer mix weights each layer's mass by its layer weight. The
prompt's tokens are the text rows between ``<|vision_end|>`` and the next marker (the user text: not the chat
template, nor a think block). Image rows precede the text in the causal sequence, so their hidden states are those
of the image alone; only the ranking depends on the prompt (which is why the VL key then records the text).

**Selection.** :func:`top_rows`: the ``k = round(alpha·K)`` rows (``engine.conditioning.append.append_count``) of
most mass, kept in their raster order; ties go to the earlier row. The rows themselves, not averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from engine.types import PositionKind

__all__ = ["AttentionProbe", "prompt_positions", "top_rows"]


def prompt_positions(kinds: Sequence[str], vision_end: int | None) -> list[int]:
    """The prompt's positions: the text rows after ``<|vision_end|>`` up to the next marker (``[]`` without one)."""
    if vision_end is None:
        return []
    out = []
    for position in range(vision_end + 1, len(kinds)):
        if kinds[position] == PositionKind.MARKER.value:
            break
        if kinds[position] == PositionKind.TEXT.value:
            out.append(position)
    return out


def top_rows(image: torch.Tensor, mass: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` rows of ``image [N, D]`` with the most ``mass [N]``, in their original order (ties: earlier)."""
    if mass.dim() != 1 or mass.shape[0] != image.shape[0]:
        raise ValueError(f"the attention mass must have one value per image row ({image.shape[0]}); got "
                         f"{tuple(mass.shape)}")
    chosen = torch.sort(mass.to(torch.float32), descending=True, stable=True).indices[:max(0, int(count))]
    return image[torch.sort(chosen).values.to(image.device)]


def _layer_mass(attn: nn.Module, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
                queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The prompt rows' attention mass on each key row in one attention module (its own projections)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    q = attn.q_norm(attn.q_proj(hidden).view(shape)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(hidden).view(shape)).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *cos_sin)
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)  # grouped-query: each query head's key head
    q = q[:, :, queries.to(q.device)].float()
    scores = torch.matmul(q, k.float().transpose(2, 3)) * attn.scaling  # [1, H, Q, L]
    future = torch.arange(k.shape[2], device=q.device)[None, :] > queries.to(q.device)[:, None]
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return probs[..., keys.to(q.device)].mean(dim=(0, 1, 2)).cpu()


class AttentionProbe:
    """Context manager: while active, the decoder layers of ``layers`` (``[(layer, weight)]``, counted from the end)
    under ``owner.layers`` record the prompt rows' (``queries``) attention mass on the image rows (``keys``)."""

    def __init__(self, owner: nn.Module, layers: Sequence[tuple[int, float]], queries: Sequence[int],
                 keys: Sequence[int]):
        if not queries:
            raise ValueError("append_selection attention needs prompt text for Qwen3-VL to attend from (the prompt "
                             "or vl_text); got none")
        total = len(owner.layers)
        self._modules = [(owner.layers[total + int(layer)].self_attn, float(weight)) for layer, weight in layers]
        self._queries, self._keys = torch.tensor(list(queries)), torch.tensor(list(keys))
        self._handles: list[Any] = []
        self._masses: list[tuple[torch.Tensor, float]] = []

    def __enter__(self) -> AttentionProbe:
        for module, weight in self._modules:
            self._handles.append(module.register_forward_pre_hook(self._hook(weight), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, weight: float):
        def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos_sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
            self._masses.append((_layer_mass(module, hidden, cos_sin, self._queries, self._keys), weight))

        return record

    def mass(self) -> torch.Tensor:
        """``[len(keys)]`` float32: the weighted mass of the forward that ran inside the context."""
        if len(self._masses) != len(self._modules):
            raise RuntimeError(f"attention was recorded at {len(self._masses)} of {len(self._modules)} layers")
        return torch.stack([m * w for m, w in self._masses]).sum(0) / sum(w for _, w in self._masses)
