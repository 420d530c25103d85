"""Value types shared by every stage of the engine, and by the CLI, worker and bot that call it.

Everything here is data: enums, frozen dataclasses and one documented mapping. No torch work happens here, so the
bot can import these types without loading a model. Tensor shapes are given as ``[L, D]``: ``L`` positions of a
sequence, ``D`` the hidden width (2560 for the real Qwen3-4B / Qwen3-VL-4B, 64 for the tiny test models).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image


class _Choice(str, Enum):
    """A string enum whose ``parse`` names the parameter and the allowed values on a bad value."""

    @classmethod
    def parse(cls, value: Any, name: str) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None

    def __str__(self) -> str:  # f"{mode}" prints "pool", not "BlendMode.POOL"
        return self.value


class TokenMode(_Choice):
    """Which positions of the Qwen3-VL sequence are kept (one enum: the seed's three booleans could conflict)."""

    FULL = "full"  #: every position: chat markers, image tokens, prompt text
    TEXT = "text"  #: everything except the vision span (chat prefix, prompt text, suffix)
    IMAGE = "image"  #: the vision span with its <|vision_start|>/<|vision_end|> markers
    IMAGE_NO_MARKERS = "image_no_markers"  #: the image tokens alone


class Normalization(_Choice):
    """How VL hidden states are rescaled towards the statistics of the Qwen3 text encoder."""

    GLOBAL = "global"  #: one multiplicative factor so the overall std equals ``target_std``
    PER_DIM = "per_dim"  #: z-score each dimension, clip at 3 sigma, map onto reference per-dimension mean/std
    HYBRID = "hybrid"  #: the average of ``global`` and ``per_dim``
    NONE = "none"  #: raw hidden states (same as ``scale_to_text=False``)


class OutlierMode(_Choice):
    """What happens to dimensions whose std ratio to the reference leaves the ``[1/t, t]`` band."""

    NONE = "none"
    ZERO = "zero"  #: set the column to 0
    CLAMP = "clamp"  #: bound each value to the reference band (mean +/- t * ref_std)
    SCALE = "scale"  #: rescale the whole column so its std sits on the band's edge


class OutlierDirection(_Choice):
    BOTH = "both"
    HIGH = "high"  #: over-dispersed only (std ratio > t): what the seed's code checked
    LOW = "low"  #: under-dispersed only (std ratio < 1/t): what the seed's documented outliers were


class BlendMode(_Choice):
    """How the VL sequence is mixed into the text embedding. See ``engine.conditioning.blend`` for each formula."""

    LINEAR = "linear"
    INTERPOLATE = "interpolate"
    ADAIN = "adain"
    ADAIN_PER_DIM = "adain_per_dim"
    STYLE_DELTA = "style_delta"
    POOL = "pool"
    APPEND = "append"


class FitMode(_Choice):
    """How a caption longer than the DiT's limit (1504 positions) is brought under it."""

    TRUNCATE = "truncate"
    INTERPOLATE = "interpolate"
    POOL = "pool"
    ATTENTION_POOL = "attention_pool"


class PositionKind(_Choice):
    TEXT = "text"
    IMAGE = "image"
    MARKER = "marker"


#: Largest caption the Z-Image DiT accepts after padding to a multiple of 32 (RoPE axis-0 table of 1536 entries).
MAX_CAPTION_LEN = 1504


def style_weight_to_alpha(style_weight: float) -> float:
    """Map a Midjourney-like style weight (0-1000, default 100) onto the blend alpha (0-1).

    Piecewise linear and monotonic: ``0 -> 0``, ``100 -> 0.3`` (the seed's "slight style" default), ``1000 -> 1.0``
    (the reference dominates). So ``sw`` in 0..100 gives ``alpha = 0.003 * sw`` and ``sw`` in 100..1000 gives
    ``alpha = 0.3 + 0.7 * (sw - 100) / 900``. Raises ``ValueError`` outside 0..1000.
    """
    sw = float(style_weight)
    if not 0.0 <= sw <= 1000.0:
        raise ValueError(f"style_weight must be between 0 and 1000; got {style_weight!r}")
    if sw <= 100.0:
        return round(0.003 * sw, 6)
    return round(0.3 + 0.7 * (sw - 100.0) / 900.0, 6)


def alpha_to_style_weight(alpha: float) -> float:
    """Inverse of :func:`style_weight_to_alpha` (for showing a stored alpha as a style weight)."""
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha!r}")
    if a <= 0.3:
        return round(a / 0.003, 3)
    return round(100.0 + (a - 0.3) * 900.0 / 0.7, 3)


@dataclass(frozen=True)
class LayerWeight:
    """One hidden layer of a multi-layer extraction: ``layer`` counts from the end (-1 = last), ``weight`` >= 0."""

    layer: int
    weight: float = 1.0


def parse_hidden_layer(value: Any) -> int | tuple[LayerWeight, ...]:
    """``-6`` → ``-6``; ``[[-6, 0.7], [-8, 0.3]]`` (the JSON form of :meth:`StylizeRequest.record`) → layer weights."""
    if isinstance(value, (list, tuple)):
        return tuple(lw if isinstance(lw, LayerWeight) else LayerWeight(int(lw[0]), float(lw[1])) for lw in value)
    return int(value)


@dataclass
class VLResult:
    """What Qwen3-VL extraction returns.

    Attributes:
        embeddings: ``[L, D]`` float32 on the CPU, after token selection, masking and normalisation.
        kinds: one :class:`PositionKind` value per row of ``embeddings``.
        image_span: ``(start, end)`` row indices of the image tokens in ``embeddings`` (end exclusive, markers
            excluded), or ``None`` when no image tokens were kept.
        original_std / scaled_std / scale_factor: the std before and after normalisation, and the global factor.
        masked_dimensions / masked_ratios: dimensions changed by outlier masking and their std ratios.
        settings: every setting that produced the tensor (layers, tokens, normalisation, ...), JSON-safe.
    """

    embeddings: torch.Tensor
    kinds: list[str]
    image_span: tuple[int, int] | None
    original_std: float
    scaled_std: float
    scale_factor: float
    masked_dimensions: list[int] = field(default_factory=list)
    masked_ratios: dict[int, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def image_mask(self) -> list[bool]:
        """``True`` for the rows that hold image tokens (markers excluded)."""
        return [k == PositionKind.IMAGE.value for k in self.kinds]

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensor, JSON-safe (what the cache index and the result record store)."""
        return {
            "shape": list(self.embeddings.shape),
            "kinds": list(self.kinds),
            "image_span": list(self.image_span) if self.image_span is not None else None,
            "original_std": float(self.original_std),
            "scaled_std": float(self.scaled_std),
            "scale_factor": float(self.scale_factor),
            "masked_dimensions": [int(d) for d in self.masked_dimensions],
            "masked_ratios": {str(k): float(v) for k, v in self.masked_ratios.items()},
            "settings": dict(self.settings),
        }

    @classmethod
    def from_metadata(cls, embeddings: torch.Tensor, meta: dict[str, Any]) -> VLResult:
        """Rebuild a result from :meth:`metadata` and its tensor (the cache's read path)."""
        span = meta.get("image_span")
        return cls(
            embeddings=embeddings,
            kinds=list(meta["kinds"]),
            image_span=(int(span[0]), int(span[1])) if span else None,
            original_std=float(meta["original_std"]),
            scaled_std=float(meta["scaled_std"]),
            scale_factor=float(meta["scale_factor"]),
            masked_dimensions=[int(d) for d in meta.get("masked_dimensions", [])],
            masked_ratios={int(k): float(v) for k, v in meta.get("masked_ratios", {}).items()},
            settings=dict(meta.get("settings", {})),
        )


#: The request fields a Qwen3-VL extraction depends on besides the reference, its text and the text layer: the one
#: list that :meth:`StylizeRequest.vl_identity` covers and :func:`engine.cache.keys.default_vl_key` hashes.
VL_FIELDS = ("hidden_layer", "tokens", "normalization", "target_std", "outlier_mode", "outlier_threshold",
             "outlier_direction")


@dataclass(frozen=True)
class StylizeRequest:
    """One generation request: everything that decides the output image(s).

    ``reference`` is an RGB PIL image (already decoded and sanitised by the caller) or ``None`` for pure text.
    ``hidden_layer`` is one layer (``-6``) or a tuple of :class:`LayerWeight` for a weighted multi-layer mix.
    ``strength`` ``None`` means txt2img; a value in (0, 1] runs img2img from the reference.
    ``seeds``: one seed per image; ``len(seeds)`` images are generated as one batch.
    """

    prompt: str = ""
    reference: Image.Image | None = None
    alpha: float = 0.3
    blend_mode: BlendMode = BlendMode.POOL
    hidden_layer: int | tuple[LayerWeight, ...] = -6
    tokens: TokenMode = TokenMode.FULL
    normalization: Normalization = Normalization.GLOBAL
    target_std: float = 61.0
    outlier_mode: OutlierMode = OutlierMode.NONE
    outlier_threshold: float = 10.0
    outlier_direction: OutlierDirection = OutlierDirection.BOTH
    append_tokens: int = 64
    fit_mode: FitMode = FitMode.POOL
    vl_text: str | None = None  #: text given to Qwen3-VL with the image; ``None`` = the prompt
    text_layer: int = -2  #: Qwen3 text-encoder layer (-2 is what ZImagePipeline uses)
    think: bool = False  #: add an empty ``<think>`` block to the text prompt (seed's think_comparison)
    seeds: tuple[int, ...] = (0,)
    steps: int = 9
    width: int = 1024
    height: int = 1024
    strength: float | None = None
    guidance_scale: float = 0.0
    shift: float = 3.0

    def vl_identity(self) -> tuple:
        """Everything a Qwen3-VL extraction depends on within one process: equal tuples give the same
        :class:`VLResult`. The reference by object identity (one decoded image per job or run), the VL text, the
        layer(s), the token mode, normalisation, target std, outlier settings, and the text layer (per-dimension
        normalisation and masking compare against the text encoder's statistics at that layer). Not alpha nor the
        blend mode. (The durable cache key, with pixels and model identity, is ``engine.cache.keys.pipeline_vl_key``.)
        """
        layer = self.hidden_layer
        if not isinstance(layer, int):
            layer = tuple((lw.layer, lw.weight) for lw in layer)
        return (id(self.reference), self.vl_text if self.vl_text is not None else self.prompt, layer, str(self.tokens),
                str(self.normalization), float(self.target_std), str(self.outlier_mode),
                float(self.outlier_threshold), str(self.outlier_direction), self.text_layer)

    @property
    def uses_reference_stats(self) -> bool:
        """Whether the extraction compares against the text encoder's statistics (``per_dim``/``hybrid``
        normalisation, or outlier masking)."""
        return OutlierMode.parse(self.outlier_mode, "outlier_mode") is not OutlierMode.NONE or Normalization.parse(
            self.normalization, "normalization") in (Normalization.PER_DIM, Normalization.HYBRID)

    def batch_key(self) -> tuple:
        """Requests with equal keys may share one batched DiT call: the settings the whole denoising loop shares."""
        return (self.width, self.height, self.steps, self.strength, float(self.guidance_scale), float(self.shift))

    def text_identity(self) -> tuple:
        """Everything the prompt embedding depends on: requests with equal tuples share one."""
        return (self.prompt, self.text_layer, bool(self.think))

    def replace(self, **changes: Any) -> StylizeRequest:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """Every parameter, JSON-safe, without the image itself (PNG metadata, job rows, metadata.json)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "reference":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple) and value and isinstance(value[0], LayerWeight):
                value = [[lw.layer, lw.weight] for lw in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["reference"] = None if self.reference is None else list(self.reference.size)
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any], reference: Image.Image | None = None) -> StylizeRequest:
        """The inverse of :meth:`record` (a job row rebuilt after a restart); unknown keys are ignored."""
        enums = {"blend_mode": BlendMode, "tokens": TokenMode, "normalization": Normalization,
                 "outlier_mode": OutlierMode, "outlier_direction": OutlierDirection, "fit_mode": FitMode}
        names = {f.name for f in dataclasses.fields(cls)} - {"reference"}
        kwargs: dict[str, Any] = {}
        for key, value in record.items():
            if key not in names:
                continue
            if key in enums:
                value = enums[key].parse(value, key)
            elif key == "hidden_layer":
                value = parse_hidden_layer(value)
            elif key == "seeds":
                value = tuple(int(s) for s in value)
            kwargs[key] = value
        return cls(reference=reference, **kwargs)


@dataclass
class StylizeResult:
    """What one :class:`StylizeRequest` produced.

    Attributes:
        images: one RGB PIL image per seed, in seed order.
        seeds: the seeds actually used.
        params: the request's :meth:`StylizeRequest.record` plus derived values (alpha, caption length, shift, ...).
        timings: seconds per stage (``vl``, ``text``, ``blend``, ``denoise``, ``decode``, ``total``).
        vl: the VL extraction's metadata (``VLResult.metadata()``), or ``None`` for a pure-text request.
        stats: embedding statistics (text std, blended std, caption length).
        scores: the first image's scores (:mod:`engine.scoring`), when it was scored (a sweep's cells).
    """

    images: list[Image.Image]
    seeds: list[int]
    params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    vl: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Encoded:
    """What :meth:`StylePipeline.encode` gives for one request (steps 2-4): everything the DiT stage needs.

    Attributes:
        prompt_embeds: the prompt's Qwen3 hidden state at ``text_layer``, ``[L_t, D]`` float32 on the CPU.
        vl: the reference's Qwen3-VL extraction, or ``None`` without a reference or at ``alpha == 0``.
        neutral: ``style_delta``'s mid-gray extraction, or ``None`` for the other modes.
        negative: CFG's empty-prompt embedding ``[L_n, D]``, or ``None`` when ``guidance_scale == 0``.
        timings: seconds spent on ``vl`` (with the neutral) and ``text`` (with the negative).
    """

    prompt_embeds: torch.Tensor
    vl: VLResult | None = None
    neutral: VLResult | None = None
    negative: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Caption:
    """A request's caption on its way to the DiT (steps 5-6): the pieces :class:`StylizeResult` reports on."""

    prompt_embeds: torch.Tensor  #: ``[L_t, D]``, the prompt alone
    vl: VLResult | None  #: the extraction applied (``None``: none, or ``alpha == 0``)
    blended: torch.Tensor  #: ``[L_b, D]``, after the blend
    caption: torch.Tensor  #: ``[L_c, D]``, ``L_c <= MAX_CAPTION_LEN``: what the DiT reads
    negative: torch.Tensor | None  #: CFG's negative, or ``None`` without CFG
