"""Qwen3 prompt embeddings exactly as diffusers' ``ZImagePipeline`` makes them, plus reference statistics.

``ZImagePipeline._encode_prompt`` (diffusers 0.42.1) does, per prompt:

1. ``tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
   enable_thinking=True)`` → ``"<|im_start|>user\\n{p}<|im_end|>\\n<|im_start|>assistant\\n"`` (no think block);
2. tokenise with ``padding="max_length", max_length=512, truncation=True`` (longer prompts are cut silently);
3. ``text_encoder(ids, attention_mask, output_hidden_states=True).hidden_states[-2]``: the raw output of decoder
   layer ``L-2`` (no final norm; ``hidden_states[-1]`` is the normed last layer);
4. drop the padding rows, giving one ``[L_i, D]`` tensor per prompt.

:class:`TextEncoder` reproduces that, with two differences that do not change the values:

* the forward **stops at the requested layer** (decoder layers after it and the final norm are not run), by running
  the model with its ``layers`` list temporarily cut to the needed length and reading the last kept layer's output
  with a forward hook (:func:`forward_to_layers`, shared with the Qwen3-VL extractor);
* by default each prompt runs on its own, unpadded (``pad_to_max_length=False``): a prompt's embedding then never
  depends on the other prompts of a batch, and a 20-token prompt costs 20 positions, not 512. Numerically this
  equals the pipeline's padded batch to float rounding (tests: ``allclose(atol=1e-6)`` on the tiny model in
  float32); ``pad_to_max_length=True`` runs the pipeline's exact padded batch (tests: ``torch.equal``).

Two experiment knobs the seed had but did not honour: ``layer`` (any of ``-1 .. -L``; the seed's runner always used
-2) and ``think=True``, which renders the template with ``enable_thinking=False`` so that the real Qwen3 template
appends the empty ``<think>\\n\\n</think>\\n\\n`` block (the seed's per-config think flag was ignored).

:func:`TextEncoder.reference_stats` computes the per-dimension mean/std of the configured text encoder's layer output
over :data:`REFERENCE_PROMPTS` (the statistics per-dim normalisation and outlier masking compare against). They are
always computed from the encoder in use, never read from a file of unknown origin (the seed shipped an ``.npz``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.cache.records import cache_key, ref_stats_cache_record
from engine.models.identity import model_identity, text_model_identity
from engine.models.loading import free_memory, model_loading, parse_dtype, read_json, resolve_device

log = logging.getLogger(__name__)

#: Default token budget, as ``ZImagePipeline(max_sequence_length=512)``.
MAX_SEQUENCE_LENGTH = 512

#: The fixed prompt set of :meth:`TextEncoder.reference_stats` (10 prompts of varied subject, style and length, as the
#: seed's statistics used 10 prompts). Changing it changes every statistic; it is part of the stats key.
REFERENCE_PROMPTS: tuple[str, ...] = (
    "a red fox jumping over a snowy fence at dawn",
    "portrait photo of an old fisherman with a grey beard, dramatic side lighting, 85mm",
    "a watercolor painting of a quiet harbour town with sailboats",
    "Homer Simpson eating a donut in a diner, cartoon style",
    "an astronaut riding a horse on the moon, oil on canvas",
    "a bowl of ramen on a wooden table, steam rising, food photography",
    "anime girl with long blue hair standing in a field of sunflowers",
    "isometric pixel art of a cozy library with tall shelves and a cat",
    "a misty pine forest with a river, wide landscape, golden hour",
    "a minimalist poster with bold geometric shapes in orange and teal",
)


def check_layer(layer: int, num_layers: int, name: str = "layer") -> int:
    """Validate a hidden-state index counted from the end: ``-1`` (last, after the final norm) to ``-num_layers``."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        try:
            if float(layer) != int(layer):
                raise ValueError
            layer = int(layer)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer between -{num_layers} and -1; got {layer!r}") from None
    if not -num_layers <= layer <= -1:
        raise ValueError(f"{name} must be between -{num_layers} and -1 (counted from the last layer); got {layer}")
    return layer


@contextmanager
def _only_first_layers(owner: nn.Module, count: int):
    """Temporarily cut ``owner.layers`` (an ``nn.ModuleList``) to its first ``count`` modules."""
    original = owner.layers
    if count >= len(original):
        yield
        return
    owner.layers = nn.ModuleList(list(original)[:count])
    try:
        yield
    finally:
        owner.layers = original


@contextmanager
def _capturing_outputs(owner: nn.Module, positions: dict[int, int], captured: dict[int, torch.Tensor]):
    """While open, store the output of decoder layer ``positions[layer]`` as ``captured[layer]`` (forward hooks)."""

    def hook_for(layer: int):
        def hook(_module, _args, output):
            captured[layer] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    handles = []
    try:
        for layer, position in positions.items():
            handles.append(owner.layers[position].register_forward_hook(hook_for(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_to_layers(
    owner: nn.Module, layers: Sequence[int], run: Callable[[], Any]
) -> tuple[dict[int, torch.Tensor], int]:
    """Run a decoder stack only as deep as ``layers`` need; return ``{layer: hidden state}`` and the layers run.

    ``owner`` is the module holding ``layers`` (an ``nn.ModuleList`` of decoder layers, the layout of Qwen3Model and
    Qwen3VLTextModel) and ``run()`` calls the model's forward and returns its output (with ``last_hidden_state``).
    Indices follow ``output_hidden_states``: with ``L`` layers the tuple has ``L + 1`` entries, ``[0]`` the embeddings,
    ``[k]`` (``1 <= k < L``) the raw output of decoder layer ``k - 1`` and ``[L]`` (= ``-1``) the last layer after
    the final norm. So ``layer = -n`` (``n >= 2``) is the raw output of decoder layer ``L - n``; only layers
    ``0 .. L - n`` run (``L - n + 1`` of them). ``-1`` needs every layer and the norm (``last_hidden_state``).

    The value read for ``-n`` is what a forward hook sees leaving decoder layer ``L - n``: the same tensor
    ``output_hidden_states`` records (transformers records decoder-layer outputs with hooks too), so the result
    equals ``full_forward.hidden_states[-n]`` exactly.
    """
    total = len(owner.layers)
    indices = sorted({int(layer) for layer in layers})
    need_final = -1 in indices
    raw = [layer for layer in indices if layer != -1]
    count = total if need_final else max(total + layer + 1 for layer in raw)
    captured: dict[int, torch.Tensor] = {}
    with _capturing_outputs(owner, {layer: total + layer for layer in raw}, captured), \
            _only_first_layers(owner, count):
        out = run()
    if need_final:
        captured[-1] = out.last_hidden_state
    return captured, count


@dataclass
class ReferenceStats:
    """Per-dimension mean/std of a text encoder's hidden states over :data:`REFERENCE_PROMPTS`.

    Attributes:
        mean / std: ``[D]`` float32 on the CPU (std unbiased, over the content tokens of every prompt:
            ``TextEncoder.content_mask``, no chat template, no first-token sink).
        layer: the hidden-state index they describe.
        num_prompts / num_tokens: how much text they were computed from.
        key: identifies the encoder, layer and prompt set (what a cache stores them under).
    """

    mean: torch.Tensor
    std: torch.Tensor
    layer: int
    num_prompts: int
    num_tokens: int
    key: str = ""
    global_mean: float = 0.0
    global_std: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-safe."""
        return {"layer": self.layer, "num_prompts": self.num_prompts, "num_tokens": self.num_tokens,
                "key": self.key, "global_mean": self.global_mean, "global_std": self.global_std,
                "extra": dict(self.extra)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> ReferenceStats:
        """Rebuild from :meth:`tensors` and :meth:`metadata` (a cache's read path)."""
        return cls(mean=tensors["mean"].float().cpu(), std=tensors["std"].float().cpu(), layer=int(meta["layer"]),
                   num_prompts=int(meta["num_prompts"]), num_tokens=int(meta["num_tokens"]),
                   key=str(meta.get("key", "")), global_mean=float(meta.get("global_mean", 0.0)),
                   global_std=float(meta.get("global_std", 0.0)), extra=dict(meta.get("extra", {})))


class TextEncoder:
    """The Z-Image text encoder (Qwen3-4B for the real model) and its tokenizer.

    Build with :meth:`from_pretrained` (reads ``text_encoder/`` and ``tokenizer/`` of a diffusers Z-Image folder) or
    directly from a model and tokenizer. :meth:`unload` frees the weights; the next :meth:`encode` reloads them
    from the folder (when the encoder was built from one).
    """

    def __init__(self, model: nn.Module | None, tokenizer, *, path: Path | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        if model is None and path is None:
            raise ValueError("TextEncoder needs a model or a path to load one from")
        self.path = Path(path) if path is not None else None
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype, self.device) if dtype is not None else (
            next(model.parameters()).dtype if model is not None else parse_dtype("auto", self.device))
        self.max_sequence_length = int(max_sequence_length)
        self.tokenizer = tokenizer
        self._model = model
        self._lock = threading.RLock()
        self._stats: dict[str, ReferenceStats] = {}
        self._identity: str | None = None  #: memoised :meth:`identity` (recomputed when the weights load again)
        self._num_layers = None if model is None else int(model.config.num_hidden_layers)
        if self._num_layers is None and self.path is not None:
            self._num_layers = int(read_json(self.path / "text_encoder" / "config.json")["num_hidden_layers"])

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, zimage_dir: str | Path, device: str | torch.device = "auto",
                        dtype: torch.dtype | str | None = "auto", *, lazy: bool = False,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> TextEncoder:
        """Load ``zimage_dir/text_encoder`` (``AutoModel``, e.g. Qwen3Model) and ``zimage_dir/tokenizer``.

        ``device``: auto | cpu | cuda | cuda:N; ``dtype``: auto (:func:`engine.models.loading.default_dtype`) or a name.
        ``lazy=True`` reads only the tokenizer now and loads the weights on first use.
        """
        from transformers import AutoTokenizer

        zimage_dir = Path(zimage_dir)
        if not (zimage_dir / "text_encoder").is_dir() or not (zimage_dir / "tokenizer").is_dir():
            raise ValueError(f"Z-Image folder {zimage_dir} has no text_encoder/ and tokenizer/ folders")
        dev = resolve_device(device)
        dt = parse_dtype(dtype, dev)
        tokenizer = AutoTokenizer.from_pretrained(str(zimage_dir / "tokenizer"), local_files_only=True)
        enc = cls(None, tokenizer, path=zimage_dir, device=dev, dtype=dt, max_sequence_length=max_sequence_length)
        if not lazy:
            enc.load()
        return enc

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def num_layers(self) -> int:
        return int(self._num_layers)

    @property
    def hidden_size(self) -> int:
        if self._model is not None:
            return int(self._model.config.hidden_size)
        return int(read_json(self.path / "text_encoder" / "config.json")["hidden_size"])

    @property
    def model(self) -> nn.Module:
        """The loaded model (loads it first when it was unloaded)."""
        self.load()
        return self._model

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModel

            log.info("loading text encoder from %s on %s (%s)", self.path, self.device, self.dtype)
            with model_loading():
                model = AutoModel.from_pretrained(str(self.path / "text_encoder"), dtype=self.dtype,
                                                  local_files_only=True)
            self._model = model.to(self.device).eval()
            self._num_layers = int(self._model.config.num_hidden_layers)
            self._identity = None  # the folder may hold other weights now: stats keys follow them

    def unload(self) -> None:
        """Free the weights (the tokenizer and memoised statistics stay). The next encode reloads lazily."""
        with self._lock:
            if self._model is None:
                return
            if self.path is None:
                raise RuntimeError("this TextEncoder was built from a model object and cannot reload; keep it loaded")
            self._model = None
            free_memory()

    def fingerprint(self) -> str:
        """Identifies the encoder's weights: the ``text_encoder/`` folder's
        :func:`~engine.models.identity.model_identity`, or a hash of the model's config when built in memory."""
        if self.path is not None:
            return model_identity(self.path / "text_encoder")
        return hashlib.sha256(self._model.config.to_json_string().encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------ encoding
    def format_prompt(self, prompt: str, think: bool = False) -> str:
        """The chat-templated prompt: ``enable_thinking=True`` as the pipeline, or ``False`` (empty think block)."""
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
            enable_thinking=not think,
        )

    def token_ids(self, prompt: str, think: bool = False) -> list[int]:
        """The ids the encoder sees for ``prompt`` (truncated to ``max_sequence_length``, no padding)."""
        enc = self.tokenizer([self.format_prompt(prompt, think)], max_length=self.max_sequence_length,
                             truncation=True, padding=False)
        return list(enc["input_ids"][0])

    def content_mask(self, prompt: str, think: bool = False) -> list[bool]:
        """``True`` for the rows of ``encode(prompt)`` that hold the prompt's own tokens: not the chat template
        around it (found as the ids shared with the empty prompt's at both ends) and never row 0, the attention sink
        (the seed measured massive activations at these positions)."""
        ids, empty = self.token_ids(prompt, think), self.token_ids("", think)
        head = 0
        while head < min(len(ids), len(empty)) and ids[head] == empty[head]:
            head += 1
        tail = 0
        while tail < min(len(ids), len(empty)) - head and ids[-1 - tail] == empty[-1 - tail]:
            tail += 1
        return [max(head, 1) <= i < len(ids) - tail for i in range(len(ids))]

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], layer: int = -2, think: bool = False, *,
               pad_to_max_length: bool = False) -> list[torch.Tensor]:
        """One ``[L_i, D]`` float32 CPU tensor per prompt: hidden state ``layer`` at the prompt's real positions.

        ``layer=-2, think=False`` is exactly what ``ZImagePipeline.encode_prompt`` passes to the DiT.
        ``pad_to_max_length=True`` reproduces the pipeline's padded batch bit for bit (slower: every prompt runs
        ``max_sequence_length`` positions); the default encodes each prompt alone at its own length.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        layer = check_layer(layer, self.num_layers, "layer")
        texts = [self.format_prompt(p, think) for p in prompts]  # a new list: the caller's list is not modified
        with self._lock:
            model = self.model
            if pad_to_max_length:
                batch = self.tokenizer(texts, padding="max_length", max_length=self.max_sequence_length,
                                       truncation=True, return_tensors="pt")
                ids = batch.input_ids.to(self.device)
                mask = batch.attention_mask.to(self.device).bool()
                hidden = self._hidden(model, ids, mask, layer)
                return [hidden[i][mask[i]].float().cpu() for i in range(len(texts))]
            out = []
            for text in texts:
                batch = self.tokenizer([text], padding=False, max_length=self.max_sequence_length,
                                       truncation=True, return_tensors="pt")
                ids = batch.input_ids.to(self.device)
                mask = batch.attention_mask.to(self.device).bool()
                out.append(self._hidden(model, ids, mask, layer)[0].float().cpu())
            return out

    def _hidden(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        captured, _ = forward_to_layers(
            model, [layer],
            lambda: model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=False),
        )
        return captured[layer]

    # --------------------------------------------------------------------------------------- statistics
    def identity(self) -> str:
        """:func:`~engine.models.identity.text_model_identity` of the folder (memoised), or the in-memory model's :meth:`fingerprint`."""
        ident = self._identity
        if ident is None:
            ident = text_model_identity(self.path) if self.path is not None else f"in-memory#{self.fingerprint()}"
            self._identity = ident
        return ident

    def stats_key(self, layer: int = -2, prompts: Sequence[str] = REFERENCE_PROMPTS) -> str:
        """Key of :meth:`reference_stats`: :func:`engine.cache.records.cache_key` of
        :func:`engine.cache.records.ref_stats_cache_record` over this encoder's :meth:`identity`, the layer, the prompts
        and the compute dtype (64 hex characters; the embedding cache stores the statistics under it, and the VL
        cache records of extractions normalised against them name it)."""
        return cache_key(ref_stats_cache_record(model_identity=self.identity(), layer=int(layer),
                                                prompts=list(prompts), dtype=str(self.dtype)))

    def reference_stats(self, layer: int = -2, prompts: Sequence[str] = REFERENCE_PROMPTS) -> ReferenceStats:
        """Per-dimension mean/std of this encoder's ``layer`` output over ``prompts`` (memoised per layer/prompts)."""
        layer = check_layer(layer, self.num_layers, "layer")
        key = self.stats_key(layer, prompts)
        with self._lock:
            hit = self._stats.get(key)
            if hit is not None:
                return hit
            # content tokens only (audit #11): no template rows, no first-token sink
            rows = torch.cat([e[torch.tensor(self.content_mask(p))] for p, e in
                              zip(prompts, self.encode(list(prompts), layer=layer))], dim=0)
            stats = ReferenceStats(
                mean=rows.mean(dim=0), std=rows.std(dim=0), layer=layer, num_prompts=len(prompts),
                num_tokens=int(rows.shape[0]), key=key, global_mean=float(rows.mean()), global_std=float(rows.std()),
            )
            self._stats[key] = stats
            return stats
