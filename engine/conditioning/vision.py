"""Qwen3-VL extraction: a reference image (+ text) → hidden states of one layer (or a weighted mix) → VLResult.

What :meth:`VLExtractor.extract` does, in the seed's order (seed-behaviour §1.5), with its bugs fixed:

1. **Cap the image** so that it never exceeds ``max_image_tokens`` (default 1024) image tokens. Qwen3-VL cuts the
   image into 16 px patches merged 2x2, so one token covers 32x32 px and the processor rounds each side to a
   multiple of 32 within its pixel bounds; tokens = ``(W/32)·(H/32)`` after that rounding. When the processor's
   own rounding would exceed the budget, the image is LANCZOS-resized beforehand to the 32-multiple grid that fits
   the budget and is closest to the original aspect ratio (the seed never capped: a 2048² reference gave 4096
   tokens, more than the DiT's 1504-row caption limit). Cost measured on 16 Xeon cores with AMX, bf16, forward
   stopped at layer -6: 1024² (1024 tokens) 5.0 s, 768² 2.5 s, 512² 1.1 s; on an H200 GPU ~58 ms for 1024².
2. **Chat layout** as the seed and as the Z-Image text encoder: one user message ``[image, text]`` and
   ``add_generation_prompt=True`` → ``<|im_start|>user\\n<|vision_start|>[N image]<|vision_end|>{text}<|im_end|>\\n
   <|im_start|>assistant\\n``. Removing the vision span leaves exactly the Qwen3 prompt's ids (same tokenizer,
   same template), so ``tokens="text"`` rows line up position by position with the text embedding.
3. **Forward stopped at the requested layer**: the base model (``model.model``: vision tower + language model, no
   LM head) runs with the decoder's ``layers`` list cut to the deepest layer needed
   (:func:`engine.conditioning.text.forward_to_layers`); with 36 layers and ``-6``, decoder layers 0..30 run, 31 of 36. The
   value returned for ``-n`` is exactly ``full_forward.hidden_states[-n]`` (raw output of decoder layer ``L-n``;
   ``-1`` is the normed last layer). The seed ran the full model with logits for every position. A multi-layer
   request (``[LayerWeight(-6, 2), LayerWeight(-8, 1)]``) is one forward up to the deepest requested layer and a
   weighted mean (weights normalised to sum to 1).
   Several layers are mixed by :func:`~engine.conditioning.normalize.mix_layers` (each layer's rows at the same
   scale before weighting).
4. **Token selection** with one :class:`~engine.types.TokenMode` (the seed's three booleans defaulted to a
   conflicting, text-only combination).
5. **Normalisation** (:mod:`engine.conditioning.normalize`): ``row_rms`` (default: unit-RMS rows, matched to the
   prompt's content rows at the blend), ``global`` (the seed's: one factor so the std over all elements is
   ``target_std``), ``per_dim``, ``hybrid``, ``none`` (or ``scale_to_text=False``).
6. **Outlier masking** (optional) of the normalised image rows (markers excluded) with
   :func:`engine.conditioning.sequence.mask_outliers`, against the text encoder's content-token statistics brought
   to the rows' scale (the seed masked raw rows, whose units the global factor then changed); ``zero`` sets a column
   to 0, ``mean`` to the reference's content mean.

Returned embeddings are float32 on the CPU whatever the model's device and dtype (the seed returned bf16 on CUDA).
``auto_unload=True`` frees the model after every extraction (the seed's flag of that name was never acted on); an
unloaded extractor reloads from its folder on the next call.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.conditioning.attention import AttentionProbe, prompt_positions
from engine.conditioning.sequence import mask_outliers
from engine.models.loading import (
    check_vl_folder,
    free_memory,
    load_vl_processor,
    model_loading,
    parse_dtype,
    processor_pixel_bounds,
    resolve_device,
)
from engine.conditioning.text import forward_to_layers
from engine.conditioning.normalize import mix_layers, normalize, reference_scale, std_all
from engine.conditioning.tokens import (
    ExtractOptions,
    budget_grid,
    check_reference_stats,
    extract_options,
    layers_record,
    processor_grid,
    select_positions,
)
from engine.types import LayerWeight, Normalization, OutlierDirection, OutlierMode, PositionKind, TokenMode, VLResult

log = logging.getLogger(__name__)


#: Placeholder tokens that are not "ordinary text" even if a tokenizer does not flag them special.
_MARKER_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>", "<|endoftext|>")


#: What Qwen3's chat template appends after ``<|im_start|>assistant\n`` with ``enable_thinking=False``.
THINK_BLOCK = "<think>\n\n</think>\n\n"


@dataclass
class _Forward:
    """One forward's raw output, before masking/selection/normalisation."""

    hidden: torch.Tensor  # [L, D] float32 CPU, the (mixed) layer
    ids: list[int]
    image_size: tuple[int, int]
    grid: tuple[int, int]
    layers_run: int
    think: bool = False
    attention: torch.Tensor | None = None  # the prompt's attention mass per image row (append_selection)


class VLExtractor:
    """Qwen3-VL hidden-state extraction. Build with :meth:`from_pretrained`; see the module docstring."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "auto", dtype: Any = "auto",
                 max_image_tokens: int = 1024, auto_unload: bool = False, model: Any = None, processor: Any = None):
        self.path = Path(path)
        cfg = check_vl_folder(self.path)
        text_cfg = cfg.get("text_config", cfg)
        self.num_layers = int(text_cfg["num_hidden_layers"])
        self.hidden_size = int(text_cfg["hidden_size"])
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        self.auto_unload = bool(auto_unload)
        self._model = model
        self._processor = processor
        self._lock = threading.RLock()
        self.load_count = 0
        self.max_image_tokens = self._check_budget(max_image_tokens)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", dtype: Any = "auto", *,
                        max_image_tokens: int = 1024, auto_unload: bool = False, lazy: bool = False) -> VLExtractor:
        """A Qwen3-VL folder (hub layout or the tiny one). ``lazy=True`` defers loading to the first extraction.

        ``device``: auto (CUDA when present) | cpu | cuda[:N]; ``dtype``: auto → bfloat16 on the GPU, and on the CPU
        bfloat16 where it is native (AMX/AVX512-BF16, 2.6x faster than float32 there), float32 elsewhere.
        """
        ex = cls(path, device=device, dtype=dtype, max_image_tokens=max_image_tokens, auto_unload=auto_unload)
        if not lazy:
            ex.load()
        return ex

    # ------------------------------------------------------------------------------------------- lifecycle
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import Qwen3VLForConditionalGeneration

            log.info("loading Qwen3-VL from %s on %s (%s)", self.path, self.device, self.dtype)
            with model_loading():
                model = Qwen3VLForConditionalGeneration.from_pretrained(str(self.path), dtype=self.dtype,
                                                                        local_files_only=True)
            self._model = model.to(self.device).eval()
            if self._processor is None:
                self._processor = load_vl_processor(self.path)
            self.load_count += 1

    def unload(self) -> None:
        """Free the model (the processor, small, stays). The next :meth:`extract` reloads it from ``path``."""
        with self._lock:
            if self._model is None:
                return
            self._model = None
            free_memory()

    @property
    def processor(self):
        with self._lock:
            if self._processor is None:
                self._processor = load_vl_processor(self.path)
            return self._processor

    @property
    def model(self):
        self.load()
        return self._model

    # ------------------------------------------------------------------------------------------- inputs
    def _check_budget(self, max_image_tokens: Any) -> int:
        if isinstance(max_image_tokens, bool):
            raise ValueError(f"max_image_tokens must be an integer >= 1; got {max_image_tokens!r}")
        try:
            n = int(max_image_tokens)
        except (TypeError, ValueError):
            raise ValueError(f"max_image_tokens must be an integer >= 1; got {max_image_tokens!r}") from None
        if n < 1:
            raise ValueError(f"max_image_tokens must be an integer >= 1; got {max_image_tokens!r}")
        return n

    def _pixel_bounds(self) -> tuple[int, int | None, int | None]:
        return processor_pixel_bounds(self.processor.image_processor)

    def cap_image(self, image: Image.Image, max_image_tokens: int | None = None) -> Image.Image:
        """``image`` as RGB, LANCZOS-resized (aspect kept) when the processor would give it more tokens than allowed.

        The resized image has sides that are exact multiples of 32 px, so the processor does not round it again.
        A budget below the processor's minimum pixel count cannot be met and raises ``ValueError``.
        """
        budget = self.max_image_tokens if max_image_tokens is None else self._check_budget(max_image_tokens)
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image; got {type(image).__name__}")
        img = image if image.mode == "RGB" else image.convert("RGB")
        factor, lo, hi = self._pixel_bounds()
        if lo and budget * factor * factor < lo:
            raise ValueError(f"max_image_tokens must be at least {math.ceil(lo / (factor * factor))} for this "
                             f"processor (its minimum is {lo} pixels); got {budget}")
        w, h = img.size
        cols, rows = processor_grid(w, h, factor=factor, min_pixels=lo, max_pixels=hi)
        if cols * rows <= budget:
            return img
        cols, rows = budget_grid(w, h, budget)
        return img.resize((cols * factor, rows * factor), Image.Resampling.LANCZOS)

    def build_inputs(self, image: Image.Image, text: str | None = None, max_image_tokens: int | None = None,
                     think: bool = False):
        """Processor inputs for ``[image, text]`` in one user message, plus the capped image. ``think`` appends the
        empty think block the text encoder's ``think=True`` template ends with, so VL and text rows stay aligned."""
        img = self.cap_image(image, max_image_tokens)
        content: list[dict[str, Any]] = [{"type": "image"}]
        if text:
            content.append({"type": "text", "text": str(text)})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if think:
            prompt += THINK_BLOCK
        inputs = self.processor(text=[prompt], images=[img], return_tensors="pt")
        return inputs, img

    def token_ids(self, image: Image.Image, text: str | None = None, tokens: TokenMode | str = TokenMode.FULL,
                  max_image_tokens: int | None = None) -> list[int]:
        """The input ids :meth:`extract` would keep for ``tokens`` (runs the processor only, not the model)."""
        mode = TokenMode.parse(tokens, "tokens")
        inputs, _ = self.build_inputs(image, text, max_image_tokens)
        ids = inputs["input_ids"][0].tolist()
        image_id = self._image_token_id()
        pos = [p for p, i in enumerate(ids) if i == image_id]
        if not pos or mode is TokenMode.FULL:
            return ids
        start, end = pos[0] - 1, pos[-1] + 1
        if mode is TokenMode.TEXT:
            return ids[:start] + ids[end + 1:]
        if mode is TokenMode.IMAGE:
            return ids[start:end + 1]
        return ids[start + 1:end]

    def _marker_ids(self) -> set[int]:
        tok = self.processor.tokenizer
        ids = set(int(i) for i in tok.all_special_ids)
        for idx, added in getattr(tok, "added_tokens_decoder", {}).items():
            if getattr(added, "special", False):
                ids.add(int(idx))
        for t in _MARKER_TOKENS:
            i = tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != tok.unk_token_id:
                ids.add(i)
        return ids

    # ------------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def _forward(self, image: Image.Image, text: str | None, layers: list[tuple[int, float]],
                 max_image_tokens: int | None, think: bool = False, attention: bool = False) -> _Forward:
        inputs, img = self.build_inputs(image, text, max_image_tokens, think)
        with self._lock:
            model = self.model
            inputs = inputs.to(self.device)
            lm = model.model.language_model
            probe = self._probe(lm, inputs["input_ids"][0].tolist(), layers) if attention else nullcontext()
            with probe:
                captured, count = forward_to_layers(
                    lm, [layer for layer, _ in layers],
                    lambda: model.model(**inputs, use_cache=False, output_hidden_states=False),
                )
            if len(layers) == 1:
                mixed = captured[layers[0][0]][0].to(torch.float32)  # exact: no multiply by 1.0
            else:
                mixed = mix_layers([(captured[layer][0].to(torch.float32), weight) for layer, weight in layers])
        ids = inputs["input_ids"][0].tolist()
        thw = inputs["image_grid_thw"][0].tolist()
        merge = int(getattr(self.processor.image_processor, "merge_size", 2))
        return _Forward(hidden=mixed.cpu(), ids=ids, image_size=img.size,
                        grid=(int(thw[2]) // merge, int(thw[1]) // merge), layers_run=count, think=think,
                        attention=probe.mass() if attention else None)

    def _probe(self, lm: Any, ids: list[int], layers: list[tuple[int, float]]) -> AttentionProbe:
        """``append_selection=attention``: the prompt rows' attention on the image rows at ``layers``."""
        kinds, _, vision_end = self._positions(ids)
        image_rows = [p for p, kind in enumerate(kinds) if kind == PositionKind.IMAGE.value]
        return AttentionProbe(lm, layers, prompt_positions(kinds, vision_end), image_rows)

    def extract(self, image: Image.Image, text: str | None = None, *,
                hidden_layer: int | LayerWeight | Sequence[Any] = -6, tokens: TokenMode | str = TokenMode.FULL,
                scale_to_text: bool = True, normalization: Normalization | str = Normalization.ROW_RMS,
                target_std: float = 61.0, outlier_mode: OutlierMode | str = OutlierMode.NONE,
                outlier_threshold: float = 10.0, outlier_direction: OutlierDirection | str = OutlierDirection.BOTH,
                reference_stats: Any = None, max_image_tokens: int | None = None, think: bool = False,
                attention: bool = False) -> VLResult:
        """``[L, D]`` float32 CPU embeddings of ``image`` (+ ``text``), in the module docstring's order; ``ValueError``
        naming the parameter for every bad value. ``reference_stats`` (``[D]`` ``.mean``/``.std``, e.g.
        ``TextEncoder.reference_stats()``) is needed by outlier masking and ``per_dim``/``hybrid``; ``max_image_tokens``
        overrides the extractor's budget for this call; ``think`` renders the template with the empty think block;
        ``attention`` records the prompt's attention per image row (``VLResult.attention``, ``conditioning.attention``)."""
        options = extract_options(
            hidden_layer=hidden_layer, num_layers=self.num_layers, tokens=tokens, normalization=normalization,
            scale_to_text=scale_to_text, target_std=target_std, outlier_mode=outlier_mode,
            outlier_threshold=outlier_threshold, outlier_direction=outlier_direction,
            has_stats=reference_stats is not None)
        budget = self._check_call(image, reference_stats, max_image_tokens)
        try:  # 1. the forward pass, stopped at the deepest requested layer
            fwd = self._forward(image, text, options.layers, budget, bool(think) and bool(text), attention)
        finally:
            if self.auto_unload:
                self.unload()
        kinds, start, end = self._positions(fwd.ids)
        keep, span = select_positions(options.tokens, len(fwd.ids), start, end)  # 2. token selection
        selected = fwd.hidden[keep]
        out, factor = normalize(selected, options.normalization, options.target_std, reference_stats)  # 3.
        out, masked = _mask_image_rows(out.to(torch.float32), span, options, reference_stats)  # 4. masking
        out = out.contiguous()
        settings = self._settings_record(options, reference_stats, budget, image, fwd, text,
                                         n_image=sum(k == PositionKind.IMAGE.value for k in kinds))
        return VLResult(embeddings=out, kinds=[kinds[p] for p in keep], image_span=span,
                        original_std=std_all(selected), scaled_std=std_all(out), scale_factor=float(factor),
                        masked_dimensions=masked[0], masked_ratios=masked[1], settings=settings,
                        attention=fwd.attention)

    def _check_call(self, image: Any, reference_stats: Any, max_image_tokens: int | None) -> int:
        """Check the image and statistics of one call; returns its image-token budget."""
        if reference_stats is not None:
            check_reference_stats(reference_stats, self.hidden_size)
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image; got {type(image).__name__}")
        return self.max_image_tokens if max_image_tokens is None else self._check_budget(max_image_tokens)

    def _positions(self, ids: list[int]) -> tuple[list[str], int | None, int | None]:
        """Each position's kind, and the ``<|vision_start|>`` / ``<|vision_end|>`` marker positions (``None``
        without image tokens)."""
        image_id, markers = self._image_token_id(), self._marker_ids()
        kinds = [PositionKind.IMAGE.value if i == image_id else
                 PositionKind.MARKER.value if i in markers else PositionKind.TEXT.value for i in ids]
        image_pos = [p for p, i in enumerate(ids) if i == image_id]
        if not image_pos:
            return kinds, None, None
        start, end = image_pos[0] - 1, image_pos[-1] + 1
        if start < 0 or end >= len(ids) or kinds[start] != PositionKind.MARKER.value \
                or kinds[end] != PositionKind.MARKER.value:
            raise RuntimeError("the Qwen3-VL input has image tokens without <|vision_start|>/<|vision_end|> "
                               "around them")
        return kinds, start, end

    def _settings_record(self, options: ExtractOptions, reference_stats: Any, budget: int, image: Image.Image,
                         fwd: Any, text: str | None, *, n_image: int) -> dict[str, Any]:
        """What the extraction was, for ``VLResult.settings`` (result parameters, cache records)."""
        return {
            "hidden_layer": layers_record(options.layers), "tokens": options.tokens.value,
            "normalization": options.normalization.value,
            "scale_to_text": options.scale_to_text,
            "target_std": options.target_std, "outlier_mode": options.outlier_mode.value,
            "outlier_threshold": options.outlier_threshold, "outlier_direction": options.outlier_direction.value,
            "reference_stats": getattr(reference_stats, "key", None) if reference_stats is not None else None,
            "max_image_tokens": budget, "original_size": list(image.size), "image_size": list(fwd.image_size),
            "image_grid": list(fwd.grid), "image_tokens": n_image, "vl_text": text if text else None,
            "think": bool(fwd.think),
            "layers_run": fwd.layers_run, "num_layers": self.num_layers, "model": self.path.name,
            "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
        }

    def _image_token_id(self) -> int:
        cfg_id = None
        if self._model is not None:
            cfg_id = getattr(self._model.config, "image_token_id", None)
        if cfg_id is None:
            from engine.models.loading import read_json

            cfg_id = read_json(self.path / "config.json").get("image_token_id")
        if cfg_id is None:
            cfg_id = self.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        return int(cfg_id)


def _mask_image_rows(out: torch.Tensor, span: tuple[int, int] | None, options: ExtractOptions,
                     reference_stats: Any) -> tuple[torch.Tensor, tuple[list[int], dict[int, float]]]:
    """Outlier masking of the normalised image rows (markers excluded), against the reference statistics brought to
    their scale (:func:`~engine.conditioning.normalize.reference_scale`); returns the rows and ``(masked
    dimensions, their ratios)``. After normalisation (the seed masked raw rows, whose units the global factor then
    changed by 3-5x); ``mean`` fills a column with the reference's content mean."""
    if options.outlier_mode is OutlierMode.NONE or span is None or span[1] - span[0] <= 1:
        return out, ([], {})
    image = out[span[0]:span[1]]
    ref_std, ref_mean = reference_scale(image, reference_stats)
    fixed, info = mask_outliers(image, ref_std, options.outlier_threshold, options.outlier_mode,
                                options.outlier_direction,
                                reference_mean=ref_mean if options.outlier_mode is OutlierMode.MEAN else None)
    out = out.clone()
    out[span[0]:span[1]] = fixed
    return out, ([int(d) for d in info["masked_dimensions"]], {int(k): float(v) for k, v in info["ratios"].items()})
