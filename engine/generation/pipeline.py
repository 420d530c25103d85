"""StylePipeline: reference image + prompt → Qwen3-VL hidden states blended into the Qwen3 caption → Z-Image.

Reads like a diffusers pipeline: :meth:`StylePipeline.__call__` is the numbered script of its steps, and each step is
a small named method::

    check_inputs → encode (encode_prompt, encode_reference, neutral_reference, negative_embedding)
                 → generate (blend → fit → denoise → decode)

The worker runs the two halves in two threads: :meth:`StylePipeline.encode` (steps 2-4, the encoders; returns
:class:`~engine.types.Encoded`) in its encode stage and :meth:`StylePipeline.generate` (steps 5-8, the DiT) in its DiT
stage; several requests that share :meth:`~engine.types.StylizeRequest.batch_key` go through one
:meth:`StylePipeline.generate_batch`. The models (lazy loading, devices, dtypes, reference statistics) are a
:class:`~engine.generation.components.ModelSet`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.conditioning.blend import blend as blend_embeddings
from engine.conditioning.blend import embedding_stats
from engine.conditioning.describe import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_TIME_S,
    DEFAULT_SUGGESTIONS,
    Description,
    describe_image,
)
from engine.conditioning.normalize import content_rms
from engine.conditioning.sequence import fit_caption
from engine.conditioning.text import ReferenceStats
from engine.generation import batch
from engine.generation.checks import check_request
from engine.generation.components import COMPONENTS, ModelSet
from engine.generation.memos import EncoderMemos
from engine.generation.stepped import StepCaptions, step_captions
from engine.generation.several import blend_references, encode_more, negative_caption
from engine.generation.zimage import AbortFn, Cancelled, Denoised, ProgressFn
from engine.multiref import reference_params
from engine.types import (
    MAX_CAPTION_LEN,
    BlendMode,
    Caption,
    Encoded,
    Normalization,
    OutlierMode,
    StylizeRequest,
    StylizeResult,
    VLResult,
)

__all__ = ["StylePipeline", "Cancelled", "COMPONENTS", "Encoded"]



def _elapsed(since: float) -> float:
    return time.perf_counter() - since


class StylePipeline:
    """The whole style-reference path over a :class:`ModelSet` (Qwen3 text encoder, Qwen3-VL, Z-Image DiT)."""

    def __init__(self, models: ModelSet):
        self.models = models
        self.memos = EncoderMemos()

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, zimage_path: str | Path, vl_path: str | Path | None = None, *, device: str = "auto",
                        vl_device: str = "auto", text_device: str = "auto", dtype: str | torch.dtype = "auto",
                        vl_max_image_tokens: int = 1024, vl_auto_unload: bool = False, compile: bool = False,
                        fp8: bool = False) -> StylePipeline:
        """Point at the model folders; nothing is loaded until first needed (or :meth:`load`)."""
        return cls(ModelSet(zimage_path, vl_path, device=device, vl_device=vl_device, text_device=text_device,
                            dtype=dtype, vl_max_image_tokens=vl_max_image_tokens, vl_auto_unload=vl_auto_unload,
                            compile=compile, fp8=fp8))

    @classmethod
    def from_settings(cls, settings: Any) -> StylePipeline:
        """Build from a settings object (:meth:`ModelSet.from_settings` lists the attributes it reads)."""
        return cls(ModelSet.from_settings(settings))

    # ------------------------------------------------------------------------------------------- the models
    zimage_path = property(lambda self: self.models.zimage_path, doc="The Z-Image folder.")
    vl_path = property(lambda self: self.models.vl_path, doc="The Qwen3-VL folder, or ``None``.")
    vl_max_image_tokens = property(lambda self: self.models.vl_max_image_tokens, doc="Qwen3-VL's image-token budget.")
    vl_auto_unload = property(lambda self: self.models.vl_auto_unload, doc="Unload Qwen3-VL after each extraction.")
    dit_device = property(lambda self: self.models.dit_device, doc="Where the DiT runs.")
    text_device = property(lambda self: self.models.text_device, doc="Where the Qwen3 text encoder runs.")
    vl_device = property(lambda self: self.models.vl_device, doc="Where Qwen3-VL runs (``None`` without one).")
    text_max_length = property(lambda self: self.models.text_max_length, doc="The text encoder's token budget.")
    text_encoder = property(lambda self: self.models.text_encoder, doc="The Qwen3 text encoder (lazy).")
    vl_extractor = property(lambda self: self.models.vl_extractor, doc="The Qwen3-VL extractor (lazy).")
    generator = property(lambda self: self.models.generator, doc="The Z-Image DiT + VAE (lazy).")

    def dtype_for(self, device: torch.device) -> torch.dtype:
        """The compute dtype of a component on ``device``."""
        return self.models.dtype_for(device)

    def load(self, component: str = "all") -> None:
        """Load ``vl`` | ``text`` | ``dit`` | ``all`` now (otherwise each loads on first use)."""
        self.models.load(component)

    def unload(self, component: str = "all") -> None:
        """Free ``vl`` | ``text`` | ``dit`` | ``all`` (and the memos made with them: a reload may bring new weights)."""
        self.models.unload(component)
        self.memos.forget(component)

    def loaded_components(self) -> dict[str, str]:
        """``{component: device}`` for the components whose weights are in memory now."""
        return self.models.loaded_components()

    # ------------------------------------------------------------------------------------------- reference stats
    def reference_stats(self, layer: int = -2) -> ReferenceStats:
        """Per-dimension mean/std of the text encoder's ``layer`` output (once per encoder and layer)."""
        return self.models.reference_stats(layer)

    def reference_stats_key(self, request: StylizeRequest) -> str | None:
        """The cache key of the text-encoder statistics ``request``'s extraction needs; ``None`` when it needs none."""
        if not self.needs_reference(request) or not request.uses_reference_stats:
            return None
        return self.models.reference_stats_key(request.text_layer)

    def reference_stats_for(self, request: StylizeRequest) -> ReferenceStats:
        """The statistics :meth:`reference_stats_key` names: memoised, or computed now (thread-safe)."""
        return self.reference_stats(request.text_layer)

    def seed_reference_stats(self, key: str, stats: ReferenceStats) -> None:
        """Memoise statistics fetched from a cache under ``key`` (``ValueError`` when their shape or key is wrong)."""
        self.models.seed_reference_stats(key, stats)

    # ------------------------------------------------------------------------------------------- 1. check
    def needs_reference(self, request: StylizeRequest) -> bool:
        """Whether the request needs a Qwen3-VL extraction (a reference and ``alpha > 0``)."""
        return request.reference is not None and float(request.alpha) > 0.0

    def check_inputs(self, request: StylizeRequest) -> None:
        """Raise ``ValueError`` naming the parameter for every problem in ``request``; no model is loaded.

        The one validation point (:func:`engine.generation.checks.check_request`): nothing after it re-validates.
        """
        check_request(request, text_layers=self.models.text_layers, vl_layers=self.models.vl_layers)

    # ------------------------------------------------------------------------------------------- 2-4. encode
    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor:
        """The prompt's Qwen3 embedding ``[L, D]`` (float32, CPU) at ``text_layer``, with ``think``."""
        return self.text_encoder.encode([request.prompt], layer=request.text_layer, think=request.think)[0]

    def _extract(self, request: StylizeRequest, image: Image.Image) -> VLResult:
        """The extraction exactly as :meth:`~engine.types.StylizeRequest.vl_settings` says (what its keys record):
        no prompt for a prompt-free one, raw states for ``style_delta``, VL's think block with ``think``."""
        stats = self.reference_stats_for(request) if request.uses_reference_stats else None
        settings = request.vl_settings()
        return self.vl_extractor.extract(
            image, settings["text"], hidden_layer=request.hidden_layer, tokens=request.tokens,
            normalization=Normalization.parse(settings["normalization"], "normalization"),
            target_std=request.target_std, outlier_mode=OutlierMode.parse(request.outlier_mode, "outlier_mode"),
            outlier_threshold=request.outlier_threshold, outlier_direction=request.outlier_direction,
            reference_stats=stats, think=settings["think"], attention=settings.get("selection") == "attention",
        )

    def encode_reference(self, request: StylizeRequest) -> VLResult | None:
        """Qwen3-VL extraction of the reference with the request's settings; ``None`` without one or at α = 0."""
        if not self.needs_reference(request):
            return None
        return self._extract(request, request.reference)

    def neutral_reference(self, request: StylizeRequest) -> VLResult:
        """The extraction of a mid-gray image of the reference's size with the same settings (``style_delta``;
        memoised)."""
        return self.memos.neutral(request, lambda gray: self._extract(request, gray))

    def has_negative(self, request: StylizeRequest) -> bool:
        """Whether :meth:`negative_embedding` is memoised for the request (it then needs no text encoder)."""
        return self.memos.has_negative(request)

    def describe(self, image: Image.Image, *, n: int = DEFAULT_SUGGESTIONS, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 max_time_s: float = DEFAULT_MAX_TIME_S, should_abort: AbortFn | None = None) -> Description:
        """``/describe``: ``n`` prompt suggestions for ``image`` from the same Qwen3-VL (``conditioning.describe``)."""
        return describe_image(self.vl_extractor, image, n=n, max_new_tokens=max_new_tokens, max_time_s=max_time_s,
                              should_abort=should_abort)

    def negative_embedding(self, request: StylizeRequest) -> torch.Tensor:
        """The empty prompt at the request's ``text_layer``/``think`` (CFG's negative; memoised)."""
        return self.memos.negative(
            request, lambda: self.text_encoder.encode([""], layer=request.text_layer, think=request.think)[0])

    def encode(self, request: StylizeRequest) -> Encoded:
        """Steps 2-4: the prompt, the reference, style_delta's neutral and CFG's negative (encoders only)."""
        t0 = time.perf_counter()
        prompt_embeds = self.encode_prompt(request)
        empty_negative = float(request.guidance_scale) > 0 and request.negative_reference is None
        negative = self.negative_embedding(request) if empty_negative else None
        t_text, t0 = _elapsed(t0), time.perf_counter()
        vl = self.encode_reference(request)
        neutral = None
        if vl is not None and BlendMode.parse(request.blend_mode, "blend_mode") is BlendMode.STYLE_DELTA:
            neutral = self.neutral_reference(request)
        more, negative_vl = encode_more(self, request)  # several references, a negative: () and None otherwise
        return Encoded(prompt_embeds, vl, neutral, negative, timings={"vl": _elapsed(t0), "text": t_text},
                       more=more, negative_vl=negative_vl)

    # ------------------------------------------------------------------------------------------- 5-6. blend, fit
    def blend(self, request: StylizeRequest, text_emb: torch.Tensor, vl: VLResult | None,
              neutral: VLResult | None = None) -> torch.Tensor:
        """Mix ``vl`` into ``text_emb`` with the request's mode and alpha; the text unchanged without VL or at α=0."""
        alpha = float(request.alpha)
        if vl is None or alpha == 0.0:
            return text_emb
        mode = BlendMode.parse(request.blend_mode, "blend_mode")
        if mode is BlendMode.STYLE_DELTA and neutral is None:
            neutral = self.neutral_reference(request)
        grid = vl.settings.get("image_grid")
        weights = vl.attention if mode is BlendMode.APPEND and request.append_selection == "attention" else None
        if mode is BlendMode.APPEND and request.append_selection == "attention" and weights is None:
            raise ValueError("append_selection attention needs the extraction made with it: pass encode(request)'s vl")
        return blend_embeddings(
            vl.embeddings, text_emb, alpha, mode,
            image_mask=torch.tensor(vl.image_mask, dtype=torch.bool),
            neutral=neutral.embeddings if neutral is not None else None,
            append_tokens=request.append_tokens, image_grid=tuple(grid) if grid else None,
            row_scale=self.row_scale(request, text_emb), row_weights=weights,
        )

    def row_scale(self, request: StylizeRequest, text_emb: torch.Tensor) -> float | None:
        """Under ``row_rms`` (the default) the RMS every mixed-in VL row gets: the median of the prompt's content
        rows (:func:`~engine.conditioning.normalize.content_rms`); ``None`` under the other normalisations."""
        if Normalization.parse(request.normalization, "normalization") is not Normalization.ROW_RMS:
            return None
        mask = self.text_encoder.content_mask(request.prompt, request.think)
        return content_rms(text_emb, mask if len(mask) == text_emb.shape[0] else None)

    def fit(self, request: StylizeRequest, caption: torch.Tensor) -> torch.Tensor:
        """Bring the caption under the DiT's 1504-row limit with the request's ``fit_mode``."""
        return fit_caption(caption, MAX_CAPTION_LEN, request.fit_mode)

    def caption(self, request: StylizeRequest, encoded: Encoded) -> Caption:
        """Steps 5-6: blend the reference into the prompt and fit the result (plus the negative CFG needs)."""
        vl = encoded.vl if float(request.alpha) > 0 else None
        if vl is None and self.needs_reference(request):
            raise ValueError("the request needs its reference extraction: pass encode(request)'s vl")
        blended = blend_references(self, request, encoded, vl)
        negative = encoded.negative
        if request.negative_reference is not None:
            negative = negative_caption(self, request, encoded)
        elif negative is None and float(request.guidance_scale) > 0:
            negative = self.negative_embedding(request)  # memoised: the encode stage normally made it
        out = Caption(encoded.prompt_embeds, vl, blended, self.fit(request, blended), negative)
        out.steps = step_captions(request, vl is not None, out.caption, lambda a: self.fit(request, blend_references(
            self, request.replace(alpha=a), encoded, vl)))  # style_schedule's captions
        return out

    # ------------------------------------------------------------------------------------------- 7-8. denoise, decode
    def denoise(self, request: StylizeRequest, caption: torch.Tensor, *, negative: torch.Tensor | None = None,
                progress: ProgressFn | None = None, should_abort: AbortFn | None = None,
                step_captions: StepCaptions | None = None) -> Denoised:
        """The DiT loop: txt2img, or img2img from the reference when ``strength`` is set; ``step_captions``: the
        caption of each step (``style_schedule``), else ``caption`` throughout."""
        if negative is None and float(request.guidance_scale) > 0:
            negative = self.negative_embedding(request)
        img2img = request.strength is not None
        return self.generator.denoise(
            caption, seeds=list(request.seeds), steps=request.steps, guidance_scale=request.guidance_scale,
            shift=request.shift, width=request.width, height=request.height,
            image=request.reference if img2img else None, strength=request.strength if img2img else None,
            negative_prompt_embeds=negative, fit_mode=request.fit_mode, progress=progress,
            should_abort=should_abort, step_captions=[step_captions] * len(request.seeds) if step_captions else None)

    def decode(self, denoised: Denoised) -> list[Image.Image]:
        """VAE-decode the latents to RGB images (one per seed)."""
        return self.generator.decode(denoised.latents)

    def build_result(self, request: StylizeRequest, caption: Caption, images: list[Image.Image],
                     generation: dict[str, Any], timings: dict[str, float]) -> StylizeResult:
        """The :class:`StylizeResult` of one request: its images, every parameter, timings and statistics."""
        vl = caption.vl
        params = request.record()
        params.update({
            "alpha_applied": float(request.alpha) if vl is not None else 0.0,
            "style_alphas": caption.steps.alphas if caption.steps is not None else None,
            "vl_applied": vl is not None,
            "mode": generation["mode"],
            "text_length": int(caption.prompt_embeds.shape[0]),
            "vl_length": int(vl.embeddings.shape[0]) if vl is not None else None,
            "blended_length": int(caption.blended.shape[0]),
            "caption_length": int(caption.caption.shape[0]),
            **{name: generation[name] for name in ("shift", "denoise_steps", "sigmas", "start_sigma")},
            "negative_length": int(caption.negative.shape[0]) if generation["cfg"] else None,
            "init_image_size": list(request.reference.size) if request.strength is not None else None,
            "dtype": generation["dtype"],
            "device": generation["device"],
            "text_device": str(self.text_device),
            "vl_device": str(self.vl_device) if vl is not None else None,
            "batch_images": len(generation["seeds"]),
            "zimage": self.zimage_path.name,
            "vl_model": self.vl_path.name if vl is not None and self.vl_path is not None else None,
            **reference_params(request),
        })
        return StylizeResult(images=images, seeds=list(request.seeds), params=params, timings=timings,
                             vl=vl.metadata() if vl is not None else None, stats=_caption_stats(caption))

    def generate(self, request: StylizeRequest, encoded: Encoded | VLResult | None,
                 text_emb: torch.Tensor | None = None, *, neutral: VLResult | None = None,
                 progress: ProgressFn | None = None, should_abort: AbortFn | None = None) -> StylizeResult:
        """Steps 5-8: blend → fit → denoise → decode, from :meth:`encode`'s ``Encoded``.

        The older form ``generate(request, vl, text_emb, neutral=...)`` still works (what the worker and the CLI call
        until they pass ``encode()``'s result). Raises :class:`Cancelled` when ``should_abort()`` turns true.
        """
        t_start = time.perf_counter()
        encoded = _as_encoded(encoded, text_emb, neutral)
        caption = self.caption(request, encoded)
        timings = {**encoded.timings, "blend": _elapsed(t_start)}
        den = self.denoise(request, caption.caption, negative=caption.negative, progress=progress,
                           should_abort=should_abort, step_captions=caption.steps)
        timings["denoise"] = den.seconds
        if should_abort is not None and should_abort():
            raise Cancelled("cancelled before decoding")
        t0 = time.perf_counter()
        images = self.decode(den)
        timings.update(decode=_elapsed(t0), total=_elapsed(t_start))
        return self.build_result(request, caption, images, den.params, timings)

    def generate_batch(self, requests: list[StylizeRequest], vls: list[Encoded | VLResult | None],
                       texts: list[torch.Tensor | None] | None = None, *, progress: ProgressFn | None = None,
                       should_abort: AbortFn | None = None) -> list[StylizeResult]:
        """Several requests in one batched DiT call (:func:`engine.generation.batch.generate_batch`).

        ``vls`` holds one ``Encoded`` per request, or (the older form) one extraction per request with ``texts``
        their prompt embeddings.
        """
        texts = list(texts) if texts is not None else [None] * len(requests)
        if len(vls) != len(requests) or len(texts) != len(requests):
            raise ValueError("vls and texts must have one entry per request")
        batch.check_batch(requests)
        encoded = [_as_encoded(v, t, None) for v, t in zip(vls, texts)]
        return batch.generate_batch(self, requests, encoded, progress=progress, should_abort=should_abort)

    # ------------------------------------------------------------------------------------------- everything
    def __call__(self, request: StylizeRequest, progress: ProgressFn | None = None,
                 should_abort: AbortFn | None = None) -> StylizeResult:
        """One request, start to end: the numbered steps below."""
        t_start = time.perf_counter()
        # 1. Check inputs (ValueError naming the parameter; nothing below re-validates)
        self.check_inputs(request)
        # 2. Encode the prompt: Qwen3 hidden state `text_layer`            -> prompt_embeds [L_t, D]
        # 3. Encode the reference: Qwen3-VL stopped at `hidden_layer`      -> vl (None without reference / alpha 0)
        # 4. Neutral and negative: style_delta's grey extraction, CFG's empty prompt (memoised)
        encoded = self.encode(request)
        if should_abort is not None and should_abort():
            raise Cancelled("cancelled after the encoders")
        # 5. Blend the reference into the prompt (blend_mode, alpha)       -> caption [L_c, D]
        # 6. Fit the caption under the DiT's 1504 rows (fit_mode)
        # 7. Denoise (txt2img, or img2img from the reference at `strength`) -> latents
        # 8. Decode (VAE, one image per seed) and build the StylizeResult
        result = self.generate(request, encoded, progress=progress, should_abort=should_abort)
        result.timings["total"] = _elapsed(t_start)
        return result


def _as_encoded(encoded: Encoded | VLResult | None, text_emb: torch.Tensor | None,
                neutral: VLResult | None) -> Encoded:
    """``generate``'s older arguments ``(vl, text_emb, neutral)`` as an :class:`Encoded`."""
    if isinstance(encoded, Encoded):
        return encoded
    if text_emb is None:
        raise ValueError("generate needs the prompt embedding: pass encode(request) (or vl and text_emb)")
    return Encoded(text_emb, encoded, neutral)


def _caption_stats(caption: Caption) -> dict[str, Any]:
    text_stats, blended_stats = embedding_stats(caption.prompt_embeds), embedding_stats(caption.blended)
    stats: dict[str, Any] = {"text_std": text_stats["std"], "blended_std": blended_stats["std"],
                             "caption_length": int(caption.caption.shape[0]), "text": text_stats,
                             "blended": blended_stats}
    if caption.vl is not None:
        stats.update({"vl_std": float(caption.vl.scaled_std), "vl_original_std": float(caption.vl.original_std),
                      "vl_scale_factor": float(caption.vl.scale_factor)})
    return stats
