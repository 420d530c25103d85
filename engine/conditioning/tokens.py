"""Pure helpers of the Qwen3-VL extraction: layer specs, the processor's token grid and the image budget, position
selection, the checked options. No model, no I/O (see :mod:`engine.conditioning.vision`; the normalisations are in
:mod:`engine.conditioning.normalize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from engine.types import LayerWeight, Normalization, OutlierDirection, OutlierMode, TokenMode, merge_layer_weights

__all__ = ["DEFAULT_TOKEN_PIXELS", "ExtractOptions", "budget_grid", "check_reference_stats", "extract_options",
           "layers_record", "parse_layers", "processor_grid", "select_positions"]

#: Pixels per VL token side: 16 px patches merged 2x2.
DEFAULT_TOKEN_PIXELS = 32


# ------------------------------------------------------------------------------------------------ layer specs
def parse_layers(hidden_layer: Any, num_layers: int, name: str = "hidden_layer") -> list[tuple[int, float]]:
    """Normalise ``hidden_layer`` to ``[(layer, weight), ...]`` with weights summing to 1.

    Accepts an int (``-6``), a :class:`LayerWeight`, or a sequence of LayerWeight / ``(layer, weight)`` pairs /
    ints (weight 1). Layers count from the end: ``-1`` .. ``-num_layers``. Repeated layers have their weights added.
    Raises ``ValueError`` naming ``name`` and the valid range.

    Layer semantics: Qwen3-VL's DeepStack adds vision features into the first decoder layers' hidden states at the
    image positions, so early layers carry near-raw visual features and late ones (−6 and up) what the language model
    made of them; the last layer is shaped for next-token prediction. Note (transformers 5.x, audit #3): the value
    recorded for a DeepStack layer (the first ``len(deepstack_visual_indexes)`` decoder layers: −36…−34 on the real
    4B model, −8/−7 on the tiny one) is the layer's output *before* the visual add, while the next layer reads the
    residual stream *with* it; from the first non-DeepStack layer on, recorded = what the next layer reads.
    Weights are canonicalised by :func:`engine.types.merge_layer_weights` (zero weights dropped).
    """
    pairs = []
    for item in _layer_items(hidden_layer, name):
        layer, weight = _layer_and_weight(item)
        pairs.append((_one_layer(layer, num_layers, name), _layer_weight(weight, name)))
    if sum(w for _, w in pairs) <= 0:
        raise ValueError(f"{name} weights must not all be 0")
    return merge_layer_weights(pairs)


def _layer_items(hidden_layer: Any, name: str) -> list[Any]:
    if isinstance(hidden_layer, LayerWeight):
        return [hidden_layer]
    if not isinstance(hidden_layer, (list, tuple)):
        return [hidden_layer]
    if len(hidden_layer) == 0:
        raise ValueError(f"{name} must name at least one layer; got an empty list")
    if len(hidden_layer) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      for v in hidden_layer) and isinstance(hidden_layer[1], float):
        return [tuple(hidden_layer)]  # a bare (layer, weight) pair
    return list(hidden_layer)


def _layer_and_weight(item: Any) -> tuple[Any, Any]:
    if isinstance(item, LayerWeight):
        return item.layer, item.weight
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return item[0], item[1]
    return item, 1.0


def _one_layer(value: Any, num_layers: int, name: str) -> int:
    valid = f"between -{num_layers} and -1"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer {valid}; got {value!r}")
    try:
        as_int = int(value)
        if as_int != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer {valid}; got {value!r}") from None
    if not -num_layers <= as_int <= -1:
        raise ValueError(f"{name} must be {valid} (counted from the last layer; the model has "
                         f"{num_layers} layers); got {as_int}")
    return as_int


def _layer_weight(weight: Any, name: str) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"{name} weights must be numbers >= 0; got {weight!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{name} weights must be numbers >= 0; got {weight!r}")
    return weight


def layers_record(layers: list[tuple[int, float]]) -> int | list[list[float]]:
    """JSON-safe form: a single layer as its int, a mix as ``[[layer, weight], ...]``."""
    if len(layers) == 1:
        return int(layers[0][0])
    return [[int(layer), float(w)] for layer, w in layers]


# ------------------------------------------------------------------------------------------------ image budget
def processor_grid(width: int, height: int, *, factor: int = DEFAULT_TOKEN_PIXELS, min_pixels: int | None = None,
                   max_pixels: int | None = None) -> tuple[int, int]:
    """The token grid ``(columns, rows)`` the Qwen2/3-VL processor gives a ``width x height`` image.

    The processor rounds each side to the nearest multiple of ``factor`` (32 px per token) and then scales into
    ``[min_pixels, max_pixels]`` (floor when too big, ceil when too small), keeping the aspect ratio.
    """
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if max_pixels and h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif min_pixels and h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar // factor, h_bar // factor


def budget_grid(width: int, height: int, max_tokens: int) -> tuple[int, int]:
    """The ``(columns, rows)`` grid with ``columns * rows <= max_tokens`` closest to the image's aspect ratio.

    Starts from the exact scale ``sqrt(max_tokens / (W/32 · H/32))`` and picks, among the floor/ceil grids that fit,
    the one whose aspect ratio is closest to the image's (ties → more tokens).
    """
    aspect = width / height
    scale = math.sqrt(max_tokens / ((width / DEFAULT_TOKEN_PIXELS) * (height / DEFAULT_TOKEN_PIXELS)))
    cols, rows = width / DEFAULT_TOKEN_PIXELS * scale, height / DEFAULT_TOKEN_PIXELS * scale
    best: tuple[float, int, int, int] | None = None
    for c in {max(1, math.floor(cols)), max(1, math.ceil(cols)), max(1, math.floor(cols) - 1)}:
        for r in {max(1, math.floor(rows)), max(1, math.ceil(rows)), max(1, math.floor(rows) - 1)}:
            if c * r > max_tokens:
                continue
            err = abs(math.log((c / r) / aspect))
            key = (round(err, 9), -(c * r), c, r)
            if best is None or key < best:
                best = key
    if best is None:  # max_tokens >= 1 always admits 1x1
        return 1, 1
    return best[2], best[3]


def select_positions(mode: TokenMode, length: int, start: int | None, end: int | None
                     ) -> tuple[list[int], tuple[int, int] | None]:
    """``(kept positions, image span within them)`` of a ``length``-token input for token ``mode``.

    ``start``/``end`` are the positions of ``<|vision_start|>``/``<|vision_end|>`` (``None`` without an image); the
    span is the image-token rows (markers excluded) in the kept sequence, ``None`` when none are kept.
    """
    if mode is TokenMode.FULL or start is None or end is None:
        return list(range(length)), ((start + 1, end) if start is not None and end is not None else None)
    n_image = end - start - 1
    if mode is TokenMode.TEXT:
        return list(range(0, start)) + list(range(end + 1, length)), None
    if mode is TokenMode.IMAGE:
        return list(range(start, end + 1)), (1, 1 + n_image)
    return list(range(start + 1, end)), (0, n_image)  # IMAGE_NO_MARKERS


def check_reference_stats(reference_stats: Any, width: int) -> None:
    """Raise ``ValueError`` unless ``reference_stats`` has ``[width]`` tensors ``.mean`` and ``.std``."""
    mean = getattr(reference_stats, "mean", None)
    std = getattr(reference_stats, "std", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        raise ValueError("reference_stats must have .mean and .std tensors of shape [D] "
                         "(engine.conditioning.text.TextEncoder.reference_stats())")
    if mean.numel() != width or std.numel() != width:
        raise ValueError(f"reference_stats must have {width} dimensions (the VL hidden size); "
                         f"got mean {tuple(mean.shape)} and std {tuple(std.shape)}")


@dataclass(frozen=True)
class ExtractOptions:
    """The checked, parsed options of one extraction (``VLExtractor.extract``)."""

    layers: list[tuple[int, float]]
    tokens: TokenMode
    normalization: Normalization
    target_std: float
    outlier_mode: OutlierMode
    outlier_threshold: float
    outlier_direction: OutlierDirection
    scale_to_text: bool


def extract_options(*, hidden_layer: Any, num_layers: int, tokens: Any, normalization: Any, scale_to_text: bool,
                    target_std: Any, outlier_mode: Any, outlier_threshold: Any, outlier_direction: Any,
                    has_stats: bool) -> ExtractOptions:
    """Parse and check an extraction's options; ``ValueError`` naming the parameter. (The extractor is also called
    directly, not only after ``StylePipeline.check_inputs``, so it keeps its own checks.)"""
    layers = parse_layers(hidden_layer, num_layers, "hidden_layer")
    token_mode = TokenMode.parse(tokens, "tokens")
    norm = Normalization.parse(normalization, "normalization")
    norm = norm if scale_to_text else Normalization.NONE
    out_mode = OutlierMode.parse(outlier_mode, "outlier_mode")
    out_dir = OutlierDirection.parse(outlier_direction, "outlier_direction")
    target = _positive(target_std, "target_std", "a positive number", lambda v: v > 0)
    threshold = _positive(outlier_threshold, "outlier_threshold", "a number greater than 1", lambda v: v > 1)
    if out_mode is not OutlierMode.NONE and not has_stats:
        raise ValueError(f"reference_stats is required for outlier_mode {out_mode.value} "
                         "(per-dimension std of the text encoder; TextEncoder.reference_stats())")
    if norm in (Normalization.PER_DIM, Normalization.HYBRID) and not has_stats:
        raise ValueError(f"reference_stats is required for normalization {norm.value} "
                         "(per-dimension mean/std of the text encoder; TextEncoder.reference_stats())")
    return ExtractOptions(layers, token_mode, norm, target, out_mode, threshold, out_dir, bool(scale_to_text))


def _positive(value: Any, name: str, what: str, ok: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}; got {value!r}") from None
    if not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return number
