"""StylePipeline: reference image + prompt → Qwen3-VL hidden states blended into the Qwen3 caption → Z-Image.

Reads like a diffusers pipeline; each step is a small named method::

    check_inputs → encode_text → extract_reference → blend → fit → denoise → decode

and :func:`stylize` (``StylePipeline.__call__``) runs them all. The worker runs two stages in two threads:

* stage 1 (VL thread): :meth:`StylePipeline.check_inputs`, :meth:`StylePipeline.encode_reference` (Qwen3-VL; returns
  ``None`` when there is no reference or ``alpha == 0``: the seed extracted even for its α=0 baseline) and
  :meth:`StylePipeline.encode_prompt` (Qwen3, cheap);
* stage 2 (DiT thread): :meth:`StylePipeline.generate` (blend → fit → denoise → decode), which fills the timings
  and statistics of the :class:`~engine.types.StylizeResult`.

Models load lazily on first need from local folders; :meth:`load` / :meth:`unload` manage them per component
(``vl``, ``text``, ``dit``, ``all``). Devices: ``device`` for the DiT (auto: CUDA when present), ``text_device``
(auto: with the DiT), ``vl_device`` (auto: the DiT's GPU when it has room for Qwen3-VL beside the DiT, else the
CPU; :func:`engine.models.loading.resolve_vl_device`). ``dtype`` auto: bf16 on the GPU, bf16 on CPUs with native bf16,
float32 on other CPUs (per component, by its device).

Reference statistics (per-dimension mean/std of the text encoder's layer output, needed by ``per_dim``/``hybrid``
normalisation and by outlier masking) are computed once per text encoder and layer from the configured encoder
(:meth:`engine.conditioning.text.TextEncoder.reference_stats`), memoised, and can be served by a ``stats_provider`` (e.g. the
worker's cache): ``stats_provider(key, compute) -> ReferenceStats`` returns the stored value for ``key`` or calls
``compute()`` and stores its result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.conditioning.blend import blend as blend_embeddings
from engine.conditioning.blend import embedding_stats, fit_caption
from engine.generation.zimage import (
    AbortFn,
    Cancelled,
    Denoised,
    Generator,
    ProgressFn,
    check_guidance,
    check_seeds,
    check_shift,
    check_size,
    check_steps,
    check_strength,
)
from engine.media.images import check_reference_shape
from engine.limits import LIMITS
from engine.models.loading import (
    check_vl_folder,
    check_zimage_folder,
    parse_device,
    parse_dtype,
    read_json,
    resolve_dit_device,
    resolve_vl_device,
    vl_num_layers,
)
from engine.conditioning.text import ReferenceStats, TextEncoder, check_layer
from engine.types import (
    MAX_CAPTION_LEN,
    BlendMode,
    FitMode,
    Normalization,
    OutlierDirection,
    OutlierMode,
    StylizeRequest,
    StylizeResult,
    TokenMode,
    VLResult,
)
from engine.conditioning.vision import VLExtractor, parse_layers

__all__ = ["StylePipeline", "stylize", "Cancelled", "COMPONENTS", "NEUTRAL_GRAY"]

log = logging.getLogger(__name__)

COMPONENTS = ("vl", "text", "dit", "all")
#: The neutral image of ``style_delta``: mid-gray, as the seed's ``test_style_delta.py`` used.
NEUTRAL_GRAY = (128, 128, 128)

StatsProvider = Callable[[str, Callable[[], ReferenceStats]], ReferenceStats]


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


class StylePipeline:
    """The whole style-reference path over lazily loaded Qwen3 text encoder, Qwen3-VL and Z-Image DiT."""

    def __init__(self, zimage_path: str | Path, vl_path: str | Path | None = None, *, device: str = "auto",
                 vl_device: str = "auto", text_device: str = "auto", dtype: str | torch.dtype = "auto",
                 vl_max_image_tokens: int = 1024, vl_auto_unload: bool = False, compile: bool = False,
                 fp8: bool = False, warm_size: tuple[int, int] = (1024, 1024),
                 stats_provider: StatsProvider | None = None):
        if zimage_path is None:
            raise ValueError("zimage_path is not set (a diffusers Z-Image folder is required)")
        self.zimage_path = Path(zimage_path)
        check_zimage_folder(self.zimage_path)
        self.vl_path = Path(vl_path) if vl_path is not None else None
        if self.vl_path is not None:
            check_vl_folder(self.vl_path)
        self._device_setting = parse_device(device, "device")
        self._vl_device_setting = parse_device(vl_device, "vl_device")
        self._text_device_setting = parse_device(text_device, "text_device")
        self._dtype_setting = dtype
        if not isinstance(dtype, torch.dtype):
            parse_dtype(dtype, torch.device("cpu"))  # validate the name now
        try:
            tokens = int(vl_max_image_tokens)
        except (TypeError, ValueError):
            tokens = 0
        if isinstance(vl_max_image_tokens, bool) or tokens < 1:
            raise ValueError(f"vl_max_image_tokens must be an integer >= 1; got {vl_max_image_tokens!r}")
        self.vl_max_image_tokens = tokens
        self.vl_auto_unload = bool(vl_auto_unload)
        #: Optional DiT acceleration (``engine.generation.accel``): applied, with its warm-up, each time the DiT is built.
        self.compile, self.fp8, self.warm_size = bool(compile), bool(fp8), warm_size
        self.stats_provider = stats_provider
        self.dit_device = resolve_dit_device(self._device_setting)
        self._vl_dev: torch.device | None = None
        self._lock = threading.RLock()
        self._text: TextEncoder | None = None
        self._vl: VLExtractor | None = None
        self._gen: Generator | None = None
        self._stats: dict[str, ReferenceStats] = {}
        self._negatives: dict[tuple[int, bool], torch.Tensor] = {}
        self._neutrals: OrderedDict[tuple, VLResult] = OrderedDict()
        self._text_layers = int(read_json(self.zimage_path / "text_encoder" / "config.json")["num_hidden_layers"])
        self._vl_layers = vl_num_layers(self.vl_path) if self.vl_path is not None else None

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, zimage_path: str | Path, vl_path: str | Path | None = None, *, device: str = "auto",
                        vl_device: str = "auto", text_device: str = "auto", dtype: str | torch.dtype = "auto",
                        vl_max_image_tokens: int = 1024, vl_auto_unload: bool = False, compile: bool = False,
                        fp8: bool = False, stats_provider: StatsProvider | None = None) -> StylePipeline:
        """Point at the model folders; nothing is loaded until first needed (or :meth:`load`)."""
        return cls(zimage_path, vl_path, device=device, vl_device=vl_device, text_device=text_device, dtype=dtype,
                   vl_max_image_tokens=vl_max_image_tokens, vl_auto_unload=vl_auto_unload, compile=compile,
                   fp8=fp8, stats_provider=stats_provider)

    @classmethod
    def from_settings(cls, settings: Any, *, stats_provider: StatsProvider | None = None) -> StylePipeline:
        """Build from a settings object's ``zimage_path, vl_path, device, vl_device, text_device, dtype,
        vl_max_image_tokens, vl_auto_unload, compile, fp8, width, height`` attributes (missing ones take the
        defaults; width/height are the size the compile warm-up runs at)."""
        get = lambda name, default: getattr(settings, name, default)  # noqa: E731
        return cls(get("zimage_path", None), get("vl_path", None), device=get("device", "auto"),
                   vl_device=get("vl_device", "auto"), text_device=get("text_device", "auto"),
                   dtype=get("dtype", "auto"), vl_max_image_tokens=get("vl_max_image_tokens", 1024),
                   vl_auto_unload=get("vl_auto_unload", False), compile=get("compile", False),
                   fp8=get("fp8", False), warm_size=(get("width", 1024), get("height", 1024)),
                   stats_provider=stats_provider)

    # ------------------------------------------------------------------------------------------- components
    def _dtype_for(self, device: torch.device) -> torch.dtype:
        return parse_dtype(self._dtype_setting, device)

    @property
    def text_device(self) -> torch.device:
        if self._text_device_setting == "auto":
            return self.dit_device
        return torch.device(self._text_device_setting)

    @property
    def vl_device(self) -> torch.device | None:
        """Where Qwen3-VL runs (``None`` without a VL model); ``auto`` is decided once, on first use."""
        if self.vl_path is None:
            return None
        with self._lock:
            if self._vl_dev is None:
                self._vl_dev = resolve_vl_device(self._vl_device_setting, self.dit_device,
                                                 _weights_bytes(self.vl_path))
            return self._vl_dev

    @property
    def text_encoder(self) -> TextEncoder:
        """The Qwen3 text encoder (created lazily; its weights load on first encode)."""
        with self._lock:
            if self._text is None:
                dev = self.text_device
                self._text = TextEncoder.from_pretrained(self.zimage_path, dev, self._dtype_for(dev), lazy=True)
            return self._text

    @property
    def vl_extractor(self) -> VLExtractor:
        """The Qwen3-VL extractor (created lazily). ``ValueError`` when no ``vl_path`` is configured."""
        if self.vl_path is None:
            raise ValueError("reference images need a Qwen3-VL model: vl_path is not set")
        with self._lock:
            if self._vl is None:
                dev = self.vl_device
                self._vl = VLExtractor.from_pretrained(
                    self.vl_path, dev, self._dtype_for(dev), max_image_tokens=self.vl_max_image_tokens,
                    auto_unload=self.vl_auto_unload, lazy=True)
            return self._vl

    @property
    def generator(self) -> Generator:
        """The Z-Image DiT + VAE (created lazily; weights load on first use)."""
        with self._lock:
            if self._gen is None:
                dev = self.dit_device
                self._gen = Generator.from_pretrained(self.zimage_path, dev, self._dtype_for(dev), lazy=True,
                                                      on_build=self._accelerate if self.compile or self.fp8 else None)
            return self._gen

    def _accelerate(self, generator: Generator) -> dict[str, Any]:
        """FP8 and/or regional compile of a freshly built DiT, then its warm-up (``engine.generation.accel.prepare``)."""
        from engine.generation import accel

        width, height = self.warm_size
        report = accel.prepare(generator, compile=self.compile, fp8=self.fp8, width=width, height=height)
        log.info("DiT acceleration: %s", {k: v for k, v in report.items() if k != "warm_up"})
        return report

    def _components(self, component: str) -> list[str]:
        name = str(component).strip().lower()
        if name not in COMPONENTS:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)}; got {component!r}")
        if name == "all":
            return ["text", "dit"] + (["vl"] if self.vl_path is not None else [])
        return [name]

    def load(self, component: str = "all") -> None:
        """Load ``vl`` | ``text`` | ``dit`` | ``all`` now (otherwise each loads on first use)."""
        for name in self._components(component):
            if name == "text":
                self.text_encoder.load()
            elif name == "dit":
                self.generator.load()
            else:
                self.vl_extractor.load()

    def unload(self, component: str = "all") -> None:
        """Free ``vl`` | ``text`` | ``dit`` | ``all``; each reloads lazily when next needed."""
        for name in self._components(component):
            if name == "text" and self._text is not None:
                self._text.unload()
            elif name == "dit" and self._gen is not None:
                self._gen.unload()
            elif name == "vl" and self._vl is not None:
                self._vl.unload()

    def loaded_components(self) -> dict[str, str]:
        """``{component: device}`` for the components whose weights are in memory now."""
        out: dict[str, str] = {}
        if self._text is not None and self._text.loaded:
            out["text"] = str(self._text.device)
        if self._gen is not None and self._gen.loaded:
            out["dit"] = str(self._gen.device)
        if self._vl is not None and self._vl.loaded:
            out["vl"] = str(self._vl.device)
        return out

    def reference_stats(self, layer: int = -2) -> ReferenceStats:
        """Per-dimension mean/std of the text encoder's ``layer`` output (once per encoder and layer)."""
        layer = check_layer(layer, self._text_layers, "text_layer")
        te = self.text_encoder
        key = te.stats_key(layer)
        with self._lock:
            hit = self._stats.get(key)
        if hit is not None:
            return hit

        def compute() -> ReferenceStats:
            return te.reference_stats(layer)

        stats = self.stats_provider(key, compute) if self.stats_provider is not None else compute()
        with self._lock:
            self._stats[key] = stats
        return stats

    # ------------------------------------------------------------------------------------------- 1. check
    def needs_reference(self, request: StylizeRequest) -> bool:
        """Whether the request needs a Qwen3-VL extraction (a reference and ``alpha > 0``)."""
        return request.reference is not None and float(request.alpha) > 0.0

    def check_inputs(self, request: StylizeRequest) -> None:
        """Raise ``ValueError`` naming the parameter for every problem in ``request``; no model is loaded."""
        if not isinstance(request, StylizeRequest):
            raise ValueError(f"request must be a StylizeRequest; got {type(request).__name__}")
        r = request
        if not isinstance(r.prompt, str):
            raise ValueError(f"prompt must be a string; got {type(r.prompt).__name__}")
        if r.reference is not None and not isinstance(r.reference, Image.Image):
            raise ValueError(f"reference must be a PIL image or None; got {type(r.reference).__name__}")
        if r.reference is not None:
            check_reference_shape(*r.reference.size)  # before Qwen3-VL's processor refuses it, models loaded
        if not r.prompt.strip() and r.reference is None:
            raise ValueError("prompt must not be empty when there is no reference image")
        alpha = LIMITS["alpha"].check(r.alpha)
        mode = BlendMode.parse(r.blend_mode, "blend_mode")
        tokens = TokenMode.parse(r.tokens, "tokens")
        Normalization.parse(r.normalization, "normalization")
        OutlierMode.parse(r.outlier_mode, "outlier_mode")
        OutlierDirection.parse(r.outlier_direction, "outlier_direction")
        FitMode.parse(r.fit_mode, "fit_mode")
        for name in ("target_std", "outlier_threshold", "append_tokens"):
            LIMITS[name].check(getattr(r, name))
        if r.vl_text is not None and not isinstance(r.vl_text, str):
            raise ValueError(f"vl_text must be a string or None; got {type(r.vl_text).__name__}")
        check_layer(r.text_layer, self._text_layers, "text_layer")
        if not isinstance(r.think, bool):
            raise ValueError(f"think must be true or false; got {r.think!r}")
        check_seeds(r.seeds)
        check_steps(r.steps)
        check_size(r.width, r.height)
        check_guidance(r.guidance_scale)
        check_shift(r.shift)
        if r.strength is not None:
            if r.reference is None:
                raise ValueError("strength needs a reference image (img2img starts from the reference); "
                                 "got strength without a reference")
            check_strength(r.strength)
        if mode in (BlendMode.STYLE_DELTA, BlendMode.APPEND) and r.reference is None:
            raise ValueError(f"blend_mode {mode.value} needs a reference image")
        if mode is BlendMode.APPEND and tokens is TokenMode.TEXT and r.reference is not None and alpha > 0:
            raise ValueError("tokens text keeps no image rows, which blend_mode append needs; use full, image or "
                             "image_no_markers")
        if r.reference is not None and alpha > 0:
            if self.vl_path is None:
                raise ValueError("reference images need a Qwen3-VL model, and vl_path is not set")
            parse_layers(r.hidden_layer, self._vl_layers, "hidden_layer")
        elif not isinstance(r.hidden_layer, (int, tuple, list)) or isinstance(r.hidden_layer, bool):
            raise ValueError(f"hidden_layer must be a negative layer index or a list of layer weights; got "
                             f"{r.hidden_layer!r}")

    # ------------------------------------------------------------------------------------------- 2. encode
    def encode_text(self, request: StylizeRequest) -> torch.Tensor:
        """The prompt's Qwen3 embedding ``[L, D]`` (float32, CPU) at ``text_layer``, with ``think``."""
        return self.text_encoder.encode([request.prompt], layer=request.text_layer, think=request.think)[0]

    encode_prompt = encode_text

    def _extract(self, request: StylizeRequest, image: Image.Image) -> VLResult:
        norm = Normalization.parse(request.normalization, "normalization")
        outlier = OutlierMode.parse(request.outlier_mode, "outlier_mode")
        stats = None
        if outlier is not OutlierMode.NONE or norm in (Normalization.PER_DIM, Normalization.HYBRID):
            stats = self.reference_stats(request.text_layer)
        text = request.vl_text if request.vl_text is not None else request.prompt
        return self.vl_extractor.extract(
            image, text, hidden_layer=request.hidden_layer, tokens=request.tokens, normalization=norm,
            target_std=request.target_std, outlier_mode=outlier, outlier_threshold=request.outlier_threshold,
            outlier_direction=request.outlier_direction, reference_stats=stats,
        )

    def extract_reference(self, request: StylizeRequest) -> VLResult | None:
        """Qwen3-VL extraction of the reference with the request's settings; ``None`` without one or at α = 0."""
        if not self.needs_reference(request):
            return None
        return self._extract(request, request.reference)

    encode_reference = extract_reference

    def neutral_reference(self, request: StylizeRequest) -> VLResult:
        """The extraction of a mid-gray image of the reference's size with the same settings (``style_delta``).

        Memoised per size and settings (the result depends on nothing else).
        """
        if request.reference is None:
            raise ValueError("blend_mode style_delta needs a reference image")
        rec = request.record()
        key = (tuple(request.reference.size), request.vl_text if request.vl_text is not None else request.prompt,
               str(rec["hidden_layer"]), rec["tokens"], rec["normalization"], rec["target_std"], rec["outlier_mode"],
               rec["outlier_threshold"], rec["outlier_direction"], rec["text_layer"])
        with self._lock:
            hit = self._neutrals.get(key)
            if hit is not None:
                self._neutrals.move_to_end(key)
                return hit
        gray = Image.new("RGB", request.reference.size, NEUTRAL_GRAY)
        res = self._extract(request, gray)
        with self._lock:
            self._neutrals[key] = res
            while len(self._neutrals) > 8:
                self._neutrals.popitem(last=False)
        return res

    # ------------------------------------------------------------------------------------------- 3. blend, fit
    def blend(self, request: StylizeRequest, text_emb: torch.Tensor, vl: VLResult | None,
              neutral: VLResult | None = None) -> torch.Tensor:
        """Mix ``vl`` into ``text_emb`` with the request's mode and alpha; the text unchanged without VL or at α=0."""
        alpha = float(request.alpha)
        if vl is None or alpha == 0.0:
            return text_emb
        mode = BlendMode.parse(request.blend_mode, "blend_mode")
        if mode is BlendMode.STYLE_DELTA and neutral is None:
            neutral = self.neutral_reference(request)
        return blend_embeddings(
            vl.embeddings, text_emb, alpha, mode,
            image_mask=torch.tensor(vl.image_mask, dtype=torch.bool),
            neutral=neutral.embeddings if neutral is not None else None,
            append_tokens=request.append_tokens,
        )

    def fit(self, request: StylizeRequest, caption: torch.Tensor) -> torch.Tensor:
        """Bring the caption under the DiT's 1504-row limit with the request's ``fit_mode``."""
        return fit_caption(caption, MAX_CAPTION_LEN, request.fit_mode)

    # ------------------------------------------------------------------------------------------- 4. denoise, decode
    def negative_embedding(self, request: StylizeRequest) -> torch.Tensor:
        """The empty prompt at the request's ``text_layer``/``think`` (CFG's negative; memoised)."""
        key = (int(request.text_layer), bool(request.think))
        with self._lock:
            hit = self._negatives.get(key)
        if hit is None:
            hit = self.text_encoder.encode([""], layer=request.text_layer, think=request.think)[0]
            with self._lock:
                self._negatives[key] = hit
        return hit

    def denoise(self, request: StylizeRequest, caption: torch.Tensor, *, progress: ProgressFn | None = None,
                should_abort: AbortFn | None = None) -> Denoised:
        """The DiT loop: txt2img, or img2img from the reference when ``strength`` is set."""
        negative = self.negative_embedding(request) if float(request.guidance_scale) > 0 else None
        img2img = request.strength is not None
        return self.generator.denoise(
            caption, seeds=list(request.seeds), steps=request.steps, guidance_scale=request.guidance_scale,
            shift=request.shift, width=request.width, height=request.height,
            image=request.reference if img2img else None, strength=request.strength if img2img else None,
            negative_prompt_embeds=negative, fit_mode=request.fit_mode, progress=progress,
            should_abort=should_abort,
        )

    def decode(self, denoised: Denoised) -> list[Image.Image]:
        """VAE-decode the latents to RGB images (one per seed)."""
        return self.generator.decode(denoised.latents)

    # ------------------------------------------------------------------------------------------- stage 2
    def _caption(self, request: StylizeRequest, vl: VLResult | None, text_emb: torch.Tensor | None,
                 neutral: VLResult | None, timings: dict[str, float]) -> dict[str, Any]:
        """Check, fill in what stage 1 did not give, blend and fit; returns the pieces for the result."""
        self.check_inputs(request)
        if vl is None and self.needs_reference(request):
            t0 = time.perf_counter()
            vl = self.extract_reference(request)
            timings["vl"] = time.perf_counter() - t0
        if text_emb is None:
            t0 = time.perf_counter()
            text_emb = self.encode_prompt(request)
            timings["text"] = time.perf_counter() - t0
        use_vl = vl if float(request.alpha) > 0 else None
        t0 = time.perf_counter()
        if use_vl is not None and BlendMode.parse(request.blend_mode, "blend_mode") is BlendMode.STYLE_DELTA \
                and neutral is None:
            neutral = self.neutral_reference(request)
        blended = self.blend(request, text_emb, use_vl, neutral)
        caption = self.fit(request, blended)
        timings["blend"] = time.perf_counter() - t0
        return {"text": text_emb, "vl": use_vl, "blended": blended, "caption": caption}

    def _result(self, request: StylizeRequest, parts: dict[str, Any], images: list[Image.Image],
                gp: dict[str, Any], timings: dict[str, float]) -> StylizeResult:
        text_emb, use_vl, blended, caption = parts["text"], parts["vl"], parts["blended"], parts["caption"]
        params = request.record()
        params.update({
            "alpha_applied": float(request.alpha) if use_vl is not None else 0.0,
            "vl_applied": use_vl is not None,
            "mode": gp["mode"],
            "text_length": int(text_emb.shape[0]),
            "vl_length": int(use_vl.embeddings.shape[0]) if use_vl is not None else None,
            "blended_length": int(blended.shape[0]),
            "caption_length": int(caption.shape[0]),
            "shift": gp["shift"],
            "denoise_steps": gp["denoise_steps"],
            "sigmas": gp["sigmas"],
            "negative_length": int(self.negative_embedding(request).shape[0]) if gp["cfg"] else None,
            "init_image_size": list(request.reference.size) if request.strength is not None else None,
            "dtype": gp["dtype"],
            "device": gp["device"],
            "text_device": str(self.text_device),
            "vl_device": str(self.vl_device) if use_vl is not None else None,
            "batch_images": len(gp["seeds"]),
            "zimage": self.zimage_path.name,
            "vl_model": self.vl_path.name if use_vl is not None and self.vl_path is not None else None,
        })
        text_stats = embedding_stats(text_emb)
        blended_stats = embedding_stats(blended)
        stats: dict[str, Any] = {
            "text_std": text_stats["std"],
            "blended_std": blended_stats["std"],
            "caption_length": int(caption.shape[0]),
            "text": text_stats,
            "blended": blended_stats,
        }
        if use_vl is not None:
            stats.update({"vl_std": float(use_vl.scaled_std), "vl_original_std": float(use_vl.original_std),
                          "vl_scale_factor": float(use_vl.scale_factor)})
        return StylizeResult(images=images, seeds=list(request.seeds), params=params, timings=timings,
                             vl=use_vl.metadata() if use_vl is not None else None, stats=stats)

    def generate(self, request: StylizeRequest, vl: VLResult | None, text_emb: torch.Tensor | None = None, *,
                 neutral: VLResult | None = None, progress: ProgressFn | None = None,
                 should_abort: AbortFn | None = None) -> StylizeResult:
        """Stage 2: blend → fit → denoise → decode.

        ``vl`` is stage 1's extraction (``None`` for a pure-text request; if it is ``None`` although the request
        needs one, it is extracted here). ``text_emb`` defaults to :meth:`encode_prompt`. ``neutral`` (style_delta)
        defaults to :meth:`neutral_reference`. Raises :class:`Cancelled` when ``should_abort()`` turns true.
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        parts = self._caption(request, vl, text_emb, neutral, timings)
        den = self.denoise(request, parts["caption"], progress=progress, should_abort=should_abort)
        timings["denoise"] = den.seconds
        if should_abort is not None and should_abort():
            raise Cancelled("cancelled before decoding")
        t0 = time.perf_counter()
        images = self.decode(den)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        return self._result(request, parts, images, den.params, timings)

    def generate_batch(self, requests: list[StylizeRequest], vls: list[VLResult | None],
                       texts: list[torch.Tensor | None] | None = None, *, progress: ProgressFn | None = None,
                       should_abort: AbortFn | None = None) -> list[StylizeResult]:
        """Several requests in one batched DiT call (all seeds of all requests); one result per request.

        The requests must agree on ``width, height, steps, strength, guidance_scale, shift`` (``ValueError``
        otherwise). Each keeps its own caption, seeds, negative and (img2img) reference. Timings of the shared
        denoise and decode are the batch's.

        What batching promises: a request's images are the images :meth:`generate` gives it alone. Each image has
        its own CPU generator, so its starting noise is exactly the same; the pixels agree up to float32 reordering
        (another batch shape can take other CPU/GPU kernels, which torch does not promise to be bit-identical across
        shapes, vendors or thread counts): a level or two, where another seed changes a pixel by ~40 on average.
        """
        if not requests:
            return []
        texts = list(texts) if texts is not None else [None] * len(requests)
        if len(vls) != len(requests) or len(texts) != len(requests):
            raise ValueError("vls and texts must have one entry per request")
        keys = {(r.width, r.height, r.steps, r.strength, float(r.guidance_scale), float(r.shift)) for r in requests}
        if len(keys) != 1:
            raise ValueError("requests in one batch must share width, height, steps, strength, guidance_scale and "
                             "shift")
        first = requests[0]
        t_start = time.perf_counter()
        all_timings = [dict() for _ in requests]
        parts = [self._caption(r, v, t, None, tm) for r, v, t, tm in zip(requests, vls, texts, all_timings)]
        captions, seeds, images, negatives = [], [], [], []
        cfg = float(first.guidance_scale) > 0
        for r, p in zip(requests, parts):
            for s in r.seeds:
                captions.append(p["caption"])
                seeds.append(s)
                if r.strength is not None:
                    images.append(r.reference)
                if cfg:
                    negatives.append(self.negative_embedding(r))
        den = self.generator.denoise(
            captions, seeds=seeds, steps=first.steps, guidance_scale=first.guidance_scale, shift=first.shift,
            width=first.width, height=first.height, image=images or None, strength=first.strength,
            negative_prompt_embeds=negatives or None, fit_mode=FitMode.TRUNCATE, progress=progress,
            should_abort=should_abort,
        )
        if should_abort is not None and should_abort():
            raise Cancelled("cancelled before decoding")
        t0 = time.perf_counter()
        decoded = self.generator.decode(den.latents)
        t_decode = time.perf_counter() - t0
        total = time.perf_counter() - t_start
        out, at = [], 0
        for r, p, tm in zip(requests, parts, all_timings):
            n = len(r.seeds)
            tm.update({"denoise": den.seconds, "decode": t_decode, "total": total})
            out.append(self._result(r, p, decoded[at:at + n], den.params, tm))
            at += n
        return out

    # ------------------------------------------------------------------------------------------- everything
    def __call__(self, request: StylizeRequest, progress: ProgressFn | None = None,
                 should_abort: AbortFn | None = None) -> StylizeResult:
        """check_inputs → encode_text → extract_reference → blend → fit → denoise → decode."""
        t_start = time.perf_counter()
        self.check_inputs(request)
        t0 = time.perf_counter()
        vl = self.extract_reference(request)
        neutral = None
        if vl is not None and BlendMode.parse(request.blend_mode, "blend_mode") is BlendMode.STYLE_DELTA:
            neutral = self.neutral_reference(request)
        t_vl = time.perf_counter() - t0
        if should_abort is not None and should_abort():
            raise Cancelled("cancelled after the reference extraction")
        t0 = time.perf_counter()
        text = self.encode_text(request)
        t_text = time.perf_counter() - t0
        result = self.generate(request, vl, text, neutral=neutral, progress=progress, should_abort=should_abort)
        result.timings = {"vl": t_vl, "text": t_text, **result.timings, "total": time.perf_counter() - t_start}
        return result


def stylize(request: StylizeRequest, pipeline: StylePipeline, *, progress: ProgressFn | None = None,
            should_abort: AbortFn | None = None) -> StylizeResult:
    """Run one request through ``pipeline`` (what the worker, the CLI and the bot call)."""
    return pipeline(request, progress=progress, should_abort=should_abort)
