"""Value types shared by every stage of the engine, and by the CLI, worker and bot that call it.

Data only (enums, dataclasses), no torch work: the bot imports them without loading a model. Shapes are ``[L, D]``:
``L`` positions, ``D`` the hidden width (2560 for Qwen3-4B / Qwen3-VL-4B, 64 for the tiny models)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from engine.choices import (  # noqa: F401 (re-exported: callers import the enums from here)
    AppendSelection, BlendMode, Choice, FitMode, Normalization, OutlierDirection, OutlierMode, PositionKind,
    StyleSchedule, TokenMode,
)
from engine.styleweight import alpha_to_style_weight, style_weight_to_alpha  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image


#: Largest caption the Z-Image DiT accepts after padding to a multiple of 32 (RoPE axis-0 table of 1536 entries).
MAX_CAPTION_LEN = 1504


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


def merge_layer_weights(pairs: Any) -> list[tuple[int, float]]:
    """``[(layer, weight)]`` canonical (the one rule of ``tokens.parse_layers`` and the keys): repeats added, zero
    weights dropped, normalised to sum 1 (12 digits: ``(2, 2)`` is ``(1, 1)``), last layer first."""
    weights: dict[int, float] = {}
    for layer, weight in pairs:
        weights[int(layer)] = weights.get(int(layer), 0.0) + float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("hidden_layer weights must not all be 0")
    return [(layer, round(w / total, 12)) for layer, w in sorted(weights.items(), reverse=True) if w > 0]


def canonical_layers(hidden_layer: Any) -> int | list[list[float]]:
    """``-6``, ``[LayerWeight(-6)]`` and ``[(-6, 2.0)]`` are all ``-6``; a mix is ``[[layer, weight], ...]``."""
    items = [hidden_layer] if isinstance(hidden_layer, LayerWeight) else hidden_layer
    if not isinstance(items, (list, tuple)):
        return int(items)
    merged = merge_layer_weights((i.layer, i.weight) if isinstance(i, LayerWeight) else (i, 1.0)
                                 if isinstance(i, int) else i for i in items)
    return merged[0][0] if len(merged) == 1 else [[layer, w] for layer, w in merged]


#: Token modes whose rows all precede the prompt in the causal VL sequence: prompt-free (bit-exact), so extracted
#: from the image alone.
PROMPT_FREE_TOKENS = ("image", "image_no_markers")


def applicable_vl_settings(normalization: Any, target_std: Any, outlier_mode: Any, outlier_threshold: Any,
                           outlier_direction: Any) -> dict[str, Any]:
    """The normalisation/outlier settings that apply: ``target_std`` under global/hybrid only, threshold and
    direction with masking only (one home for the VL cache record and :meth:`StylizeRequest.vl_settings`)."""
    norm, mode = Normalization.parse(normalization, "normalization"), OutlierMode.parse(outlier_mode, "outlier_mode")
    out: dict[str, Any] = {"normalization": norm.value, "outlier_mode": mode.value}
    if norm in (Normalization.GLOBAL, Normalization.HYBRID):
        out["target_std"] = float(target_std)
    if mode is not OutlierMode.NONE:
        out["outlier_threshold"] = float(outlier_threshold)
        out["outlier_direction"] = OutlierDirection.parse(outlier_direction, "outlier_direction").value
    return out


@dataclass
class VLResult:
    """What Qwen3-VL extraction returns: ``embeddings`` ``[L, D]`` float32 CPU (selected, normalised, masked);
    ``kinds``, one :class:`PositionKind` per row; ``image_span``, the image rows ``(start, end)`` (end exclusive,
    markers excluded) or ``None``; the std before/after normalisation and its factor; the dimensions outlier masking
    changed and their ratios; ``settings``, everything that produced the tensor (JSON-safe)."""

    embeddings: torch.Tensor
    kinds: list[str]
    image_span: tuple[int, int] | None
    original_std: float
    scaled_std: float
    scale_factor: float
    masked_dimensions: list[int] = field(default_factory=list)
    masked_ratios: dict[int, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    attention: torch.Tensor | None = None  #: ``[n_image]`` the prompt's attention mass per image row, or ``None``

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


#: The request fields an extraction may depend on (besides pixels and text layer): :meth:`StylizeRequest.vl_settings`
#: reads these and keeps what applies; vl_identity and both VL cache keys derive from it.
VL_FIELDS = ("hidden_layer", "tokens", "normalization", "target_std", "outlier_mode", "outlier_threshold",
             "outlier_direction", "blend_mode", "prompt", "vl_text", "think", "append_selection")


#: The request fields that hold images: never in :meth:`StylizeRequest.record` (their sizes are), given back to
#: :meth:`StylizeRequest.from_record`.
IMAGE_FIELDS = ("reference", "references", "negative_reference")


@dataclass(frozen=True)
class StylizeRequest:
    """One generation request: everything that decides the output image(s).

    ``reference`` is an RGB PIL image (already decoded and sanitised by the caller) or ``None`` for pure text.
    ``hidden_layer`` is one layer (``-6``) or a tuple of :class:`LayerWeight` for a weighted multi-layer mix.
    ``strength`` ``None`` means txt2img; a value in (0, 1] runs img2img from the reference.
    ``seeds``: one seed per image; ``len(seeds)`` images are generated as one batch.
    ``references``, ``weights``, ``negative_reference``: several references and a negative (:mod:`engine.multiref`).
    """

    prompt: str = ""
    reference: Image.Image | None = None
    alpha: float = 0.3
    blend_mode: BlendMode = BlendMode.POOL
    hidden_layer: int | tuple[LayerWeight, ...] = -6
    tokens: TokenMode = TokenMode.FULL
    normalization: Normalization = Normalization.ROW_RMS
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
    style_schedule: StyleSchedule = StyleSchedule.CONSTANT  #: the reference's share over the steps
    append_selection: AppendSelection = AppendSelection.POOL  #: append's rows: pooled, or chosen by attention
    references: tuple[Image.Image, ...] = ()  #: further references after ``reference`` (at most 4 in all)
    weights: tuple[float, ...] = ()  #: one per reference, ``reference`` first; ``()``: equal weights
    negative_reference: Image.Image | None = None  #: CFG's negative caption: the prompt with this reference blended

    def vl_settings(self) -> dict[str, Any]:
        """What the extraction depends on besides the pixels, canonical and JSON-safe: ``layers``, ``tokens``, the
        :func:`applicable_vl_settings` (``style_delta`` takes raw states unless the normalisation is row-local, so an
        image-independent row gives δ = 0), ``text`` (``vl_text`` or the prompt; ``None`` for PROMPT_FREE_TOKENS and
        ``append`` under a row-local normalisation, never with ``selection``: attention ranks the rows by the prompt),
        ``think`` (VL's think block, with a text only). The extraction runs with these; every key derives from them."""
        f = {name: getattr(self, name) for name in VL_FIELDS}
        mode = BlendMode.parse(f["blend_mode"], "blend_mode")
        norm = Normalization.parse(f["normalization"], "normalization")
        row_local = norm in (Normalization.ROW_RMS, Normalization.NONE)  # each row's factor its own
        norm = Normalization.NONE if mode is BlendMode.STYLE_DELTA and not row_local else norm  # audit #18
        out = {"layers": canonical_layers(f["hidden_layer"]), "tokens": TokenMode.parse(f["tokens"], "tokens").value,
               **applicable_vl_settings(norm, f["target_std"], f["outlier_mode"], f["outlier_threshold"],
                                        f["outlier_direction"])}
        image_only = out["tokens"] in PROMPT_FREE_TOKENS or (mode is BlendMode.APPEND and row_local)
        if mode is BlendMode.APPEND and f["append_selection"] == AppendSelection.ATTENTION:  # ranked by the prompt
            image_only, out["selection"] = False, "attention"
        text = f["vl_text"] if f["vl_text"] is not None else f["prompt"]
        out["text"] = None if image_only or not text else str(text)
        out["think"] = bool(f["think"]) and out["text"] is not None
        return out

    def vl_identity(self) -> tuple:
        """Equal tuples give the same :class:`VLResult` in one process: the reference by object identity,
        :meth:`vl_settings`, and the text layer when statistics are compared against. (The durable key, with pixels
        and model identity, is ``engine.cache.keys.pipeline_vl_key``.)"""
        items = tuple(sorted((k, repr(v)) for k, v in self.vl_settings().items()))
        return (id(self.reference), items, self.text_layer if self.uses_reference_stats else None)

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
            if f.name in IMAGE_FIELDS:
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
        out["references"] = [list(image.size) for image in self.references]
        out["negative_reference"] = None if self.negative_reference is None else list(self.negative_reference.size)
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any], reference: Image.Image | None = None,
                    references: tuple[Image.Image, ...] = (), negative_reference: Image.Image | None = None
                    ) -> StylizeRequest:
        """The inverse of :meth:`record` (a job row rebuilt after a restart) given its images; unknown keys are
        ignored, and a record older than a field gets the field's default."""
        enums = {"blend_mode": BlendMode, "tokens": TokenMode, "normalization": Normalization,
                 "outlier_mode": OutlierMode, "outlier_direction": OutlierDirection, "fit_mode": FitMode,
                 "style_schedule": StyleSchedule, "append_selection": AppendSelection}
        names = {f.name for f in dataclasses.fields(cls)} - set(IMAGE_FIELDS)
        kwargs: dict[str, Any] = {}
        for key, value in record.items():
            if key not in names:
                continue
            if key in enums:
                value = enums[key].parse(value, key)
            elif key == "hidden_layer":
                value = parse_hidden_layer(value)
            elif key in ("seeds", "weights"):
                value = tuple((int if key == "seeds" else float)(s) for s in value)
            kwargs[key] = value
        return cls(reference=reference, references=tuple(references), negative_reference=negative_reference,
                   **kwargs)


@dataclass
class StylizeResult:
    """What one :class:`StylizeRequest` produced: one RGB image per seed (seed order), the seeds, ``params`` (its
    :meth:`~StylizeRequest.record` plus derived values: alpha applied, lengths, shift, start sigma, ...), seconds per
    stage, the VL metadata (``None`` for pure text), embedding statistics, the first image's scores (a sweep's)."""

    images: list[Image.Image]
    seeds: list[int]
    params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    vl: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Encoded:
    """What :meth:`StylePipeline.encode` gives for one request (steps 2-4): everything the DiT stage needs. Attributes:

        prompt_embeds: the prompt's Qwen3 hidden state at ``text_layer``, ``[L_t, D]`` float32 on the CPU.
        vl: the reference's Qwen3-VL extraction, or ``None`` without a reference or at ``alpha == 0``.
        neutral: ``style_delta``'s mid-gray extraction, or ``None`` for the other modes.
        negative: CFG's empty-prompt embedding ``[L_n, D]``, or ``None`` when ``guidance_scale == 0``.
        more: the further references' extractions (``StylizeRequest.references`` order); negative_vl: the negative
            reference's (its caption replaces ``negative``).
        timings: seconds spent on ``vl`` (with the neutral) and ``text`` (with the negative).
    """

    prompt_embeds: torch.Tensor
    vl: VLResult | None = None
    neutral: VLResult | None = None
    negative: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    more: tuple[VLResult, ...] = ()
    negative_vl: VLResult | None = None


@dataclass
class Caption:
    """A request's caption on its way to the DiT (steps 5-6): the pieces :class:`StylizeResult` reports on."""

    prompt_embeds: torch.Tensor  #: ``[L_t, D]``, the prompt alone
    vl: VLResult | None  #: the extraction applied (``None``: none, or ``alpha == 0``)
    blended: torch.Tensor  #: ``[L_b, D]``, after the blend
    caption: torch.Tensor  #: ``[L_c, D]``, ``L_c <= MAX_CAPTION_LEN``: what the DiT reads
    negative: torch.Tensor | None  #: CFG's negative, or ``None`` without CFG
    steps: Any = None  #: ``style_schedule``'s per-step captions (``generation.stepped.StepCaptions``); ``None``: one
