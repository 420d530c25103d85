"""The sweep planner: one implementation shared by ``python -m engine sweep`` and the bot's ``/sweep``.

A sweep is a list of :class:`SweepCell` s, each one :class:`~engine.types.StylizeRequest` with a label. It is built
from a base request (the user's settings), an optional named preset (:data:`PRESETS`) and per-axis value lists
(``overrides``) that replace the preset's values for that axis or add a new axis; the cells are the cross product of
the axes. Pure and cheap: no torch, no models.

Fixed relative to the seed's ``run_comparison.py`` (``docs/seed-behaviour.md`` §4):

* **Every sweep has a pure-text baseline** (``alpha = 0``). The seed added its baseline only when ``0.0`` was *not*
  among the alphas and then skipped the ``alpha = 0`` configs, so its ``alpha`` and ``full`` sweeps had no
  pure-text image at all; img2img sweeps had none either. Here ``alpha = 0`` is never a VL cell: it is the baseline,
  one per combination of the axes that change the output without VL (``strength``, ``steps``, ``think``, ``seed``).
  A txt2img baseline carries no reference (nothing is extracted); an img2img baseline keeps the reference as the
  img2img source and only drops the VL blend (so it shows what VL adds over plain img2img).
* **Shift is explicit**: every cell carries the base request's ``shift`` (3.0 unless the user changes it); the seed
  never passed it and ran at ~1.15.
* **think takes effect**: ``think`` is a field of each cell's request (the seed encoded the prompt once with the first
  think mode, so its two ``think_comparison`` images were identical). The caller must encode the prompt per distinct
  ``(prompt, think, text_layer)``, never once per sweep.
* **Labels are full** (the seed cut them at 18 characters); wrapping is the grid's job.
* **A value you give is never mistaken for "unset"**: the seed treated a list equal to its CLI default as absent.

The seed's presets keep the seed's values, including its earlier fixed settings (layer -8, ``text`` tokens,
``interpolate``) that differ from this project's defaults (layer -6, ``full``, ``pool``); each such preset says so
in its ``note``, and any of those settings can be replaced with a one-value override (``layers=[-6]``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.limits import LIMITS
from engine.types import (
    BlendMode,
    LayerWeight,
    Normalization,
    OutlierMode,
    StylizeRequest,
    TokenMode,
)

__all__ = [
    "AXES",
    "PRESETS",
    "Preset",
    "SweepCell",
    "SweepPlan",
    "plan_sweep",
    "parse_values",
    "preset_names",
    "format_axis_value",
    "axis_for_key",
]

#: Largest number of values one axis may have (guards against ranges like ``0:1:0.0001``).
MAX_AXIS_VALUES = 64


# --------------------------------------------------------------------------------------------------------------
# axes
# --------------------------------------------------------------------------------------------------------------


def _parse_alpha(v: Any) -> float:
    try:
        a = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"alphas: {v!r} is not a number") from None
    return round(LIMITS["alpha"].check(a, "alphas"), 6)


def _parse_layer(v: Any) -> int | tuple[LayerWeight, ...]:
    """``-6``; ``"-6+-8"`` (equal weights) or ``"-6:0.7+-8:0.3"``; a list/tuple of ints, ``(layer, weight)`` pairs or
    :class:`LayerWeight` s."""
    def one(x: Any) -> int:
        if isinstance(x, bool):
            raise ValueError(f"layers: {x!r} is not a layer number")
        try:
            f = float(str(x).strip()) if isinstance(x, str) else float(x)
        except (TypeError, ValueError):
            raise ValueError(f"layers: {x!r} is not a layer number (use -6, or -6+-8 for a mix)") from None
        if not math.isfinite(f) or f != int(f) or int(f) > -1:
            raise ValueError(f"layers: layers count from the end and must be -1 or lower; got {x!r}")
        return LIMITS["layer"].check(int(f), "layers")  # type: ignore[no-any-return]

    def weight(x: Any) -> float:
        try:
            w = float(x)
        except (TypeError, ValueError):
            raise ValueError(f"layers: layer weight {x!r} is not a number") from None
        return LIMITS["layer_weight"].check(w, "layers: layer weight")  # type: ignore[no-any-return]

    if isinstance(v, str):
        s = v.strip().replace(" ", "")
        if "+" not in s.lstrip("+"):
            return one(s)
        parts = [p for p in s.split("+") if p]
        items = []
        for p in parts:
            layer, _, w = p.partition(":")
            items.append(LayerWeight(one(layer), weight(w) if w else 1.0))
        v = tuple(items)
    elif isinstance(v, (list, tuple)):
        items = []
        for x in v:
            if isinstance(x, LayerWeight):
                items.append(LayerWeight(one(x.layer), weight(x.weight)))
            elif isinstance(x, (list, tuple)) and len(x) == 2:
                items.append(LayerWeight(one(x[0]), weight(x[1])))
            else:
                items.append(LayerWeight(one(x), 1.0))
        v = tuple(items)
    else:
        return one(v)
    if len(v) == 1 and v[0].weight == 1.0:
        return v[0].layer
    if not v:
        raise ValueError("layers: an empty layer mix")
    if len({lw.layer for lw in v}) != len(v):
        raise ValueError(f"layers: a layer appears twice in the mix {_layer_text(v)}")
    if sum(lw.weight for lw in v) <= 0:
        raise ValueError(f"layers: the weights of {_layer_text(v)} sum to 0")
    return v


def _layer_text(v: int | tuple[LayerWeight, ...]) -> str:
    if isinstance(v, int):
        return str(v)
    if all(lw.weight == v[0].weight for lw in v):
        return "+".join(str(lw.layer) for lw in v)
    return "+".join(f"{lw.layer}:{lw.weight:g}" for lw in v)


def _parse_enum(cls, name: str, aliases: dict[str, str] | None = None):
    def parse(v: Any):
        if isinstance(v, str) and aliases:
            v = aliases.get(v.strip().lower(), v)
        return cls.parse(v, name)

    return parse


def _parse_strength(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "txt2img", "off", "")):
        return None
    try:
        s = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"strengths: {v!r} is not a number (or 'none' for txt2img)") from None
    return round(LIMITS["strength"].check(s, "strengths"), 6)


def _parse_int(name: str, bound: str):
    """A whole number (``4`` or ``4.0``, as ranges produce) within ``LIMITS[bound]``; errors name the axis key."""
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"{name}: {v!r} is not an integer")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {v!r} is not an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise ValueError(f"{name}: {v!r} is not an integer")
        return LIMITS[bound].check(int(f), name)  # type: ignore[no-any-return]

    return parse


def _parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "on", "yes", "think"):
        return True
    if s in ("0", "false", "off", "no", "nothink"):
        return False
    raise ValueError(f"thinks: {v!r} is not true/false")


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple) and v and isinstance(v[0], LayerWeight):
        return [[lw.layer, lw.weight] for lw in v]
    if hasattr(v, "value") and isinstance(getattr(v, "value"), str):  # enums
        return v.value
    return v


@dataclass(frozen=True)
class Axis:
    """One sweepable parameter: its name in cell ``axes``, its ``overrides`` key, the request field it sets."""

    name: str
    key: str  #: the overrides key (plural, as on the command line: ``alphas``)
    field: str  #: the StylizeRequest field
    parse: Callable[[Any], Any]
    label: Callable[[Any], str]
    vl: bool  #: True when the axis only matters with VL (the baseline does not repeat along it)
    numeric: bool = False  #: accepts ``start:stop:step`` ranges
    aliases: tuple[str, ...] = ()


_TOKEN_ALIASES = {"text_only": "text", "image_only": "image", "all": "full"}

#: Every axis, in the order cells are crossed when a sweep adds several.
AXES: dict[str, Axis] = {a.name: a for a in [
    Axis("alpha", "alphas", "alpha", _parse_alpha, lambda v: f"alpha={v:g}", vl=True, numeric=True),
    Axis("layer", "layers", "hidden_layer", _parse_layer,
         lambda v: f"layer={v}" if isinstance(v, int) else f"layers={_layer_text(v)}", vl=True, numeric=True,
         aliases=("hidden_layers",)),
    Axis("mode", "modes", "blend_mode", _parse_enum(BlendMode, "modes"), lambda v: f"mode={v}", vl=True,
         aliases=("blend_modes",)),
    Axis("tokens", "tokens", "tokens", _parse_enum(TokenMode, "tokens", _TOKEN_ALIASES), lambda v: f"tokens={v}",
         vl=True, aliases=("token_modes",)),
    Axis("normalization", "normalizations", "normalization", _parse_enum(Normalization, "normalizations"),
         lambda v: f"norm={v}", vl=True, aliases=("normalization_modes",)),
    Axis("outlier", "outliers", "outlier_mode", _parse_enum(OutlierMode, "outliers"), lambda v: f"outlier={v}",
         vl=True, aliases=("outlier_modes", "outlier_masking")),
    Axis("append_tokens", "append_tokens", "append_tokens", _parse_int("append_tokens", "append_tokens"),
         lambda v: f"append={v}", vl=True, numeric=True),
    Axis("strength", "strengths", "strength", _parse_strength,
         lambda v: "txt2img" if v is None else f"strength={v:g}", vl=False, numeric=True),
    Axis("steps", "steps", "steps", _parse_int("steps", "steps"), lambda v: f"steps={v}", vl=False, numeric=True),
    Axis("think", "thinks", "think", _parse_bool, lambda v: f"think={'on' if v else 'off'}", vl=False,
         aliases=("think_modes",)),
    Axis("seed", "seeds", "seeds", _parse_int("seeds", "seed"), lambda v: f"seed={v}", vl=False,
         numeric=True),
]}

_KEY_TO_AXIS: dict[str, str] = {}
for _a in AXES.values():
    for _k in (_a.name, _a.key, *_a.aliases):
        _KEY_TO_AXIS[_k] = _a.name


def axis_for_key(key: str) -> Axis:
    """The :class:`Axis` for an overrides key (``alphas``, ``alpha``, ``token_modes``, ...); ``ValueError`` if none."""
    name = _KEY_TO_AXIS.get(str(key).strip().lower())
    if name is None:
        keys = ", ".join(a.key for a in AXES.values())
        raise ValueError(f"unknown sweep axis {key!r}; use one of {keys}")
    return AXES[name]


def format_axis_value(axis: str, value: Any) -> str:
    """The label text of one axis value, JSON form accepted (``alpha=0.5``, ``layers=-6+-8``, ``txt2img``)."""
    if axis == "variant":
        return str(value)
    return _format(axis, value)


def _split_items(spec: str) -> list[str]:
    return [p for p in spec.replace(",", " ").split() if p]


def _expand_range(axis: Axis, item: str) -> list[Any] | None:
    """``start:stop:step`` (inclusive of stop) for numeric axes; ``None`` when ``item`` is not a range."""
    if not axis.numeric or item.count(":") != 2 or axis.name == "layer" and "+" in item:
        return None
    try:
        start, stop, step = (float(p) for p in item.split(":"))
    except ValueError:
        raise ValueError(f"{axis.key}: {item!r} is not a range start:stop:step") from None
    if step == 0 or math.isnan(step) or (stop - start) / step < -1e-9:
        raise ValueError(f"{axis.key}: the range {item!r} has no values (check the step's sign)")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > MAX_AXIS_VALUES:
        raise ValueError(f"{axis.key}: the range {item!r} has {n} values, more than {MAX_AXIS_VALUES}")
    return [round(start + i * step, 6) for i in range(n)]


def parse_values(key: str, spec: Any) -> list[Any]:
    """Validate a list of values for one axis; ``spec`` may be a list, one value, or text.

    Text forms: ``"0.1,0.3,0.5"`` or ``"0.1 0.3 0.5"``; a range ``"0.2:0.8:0.2"`` (inclusive, numeric axes); layer
    mixes ``"-6+-8"`` / ``"-6:0.7+-8:0.3"``. Duplicates are dropped (first kept). ``ValueError`` naming the axis.
    """
    axis = axis_for_key(key)
    if isinstance(spec, str):
        raw: list[Any] = _split_items(spec)
    elif isinstance(spec, (list, tuple)) and not (axis.name == "layer" and spec and
                                                  all(isinstance(x, LayerWeight) for x in spec)):
        raw = []
        for item in spec:
            raw.extend(_split_items(item) if isinstance(item, str) else [item])
    else:
        raw = [spec]
    values: list[Any] = []
    for item in raw:
        expanded = _expand_range(axis, item) if isinstance(item, str) else None
        for v in (expanded if expanded is not None else [item]):
            parsed = axis.parse(v)
            if parsed not in values:
                values.append(parsed)
    if not values:
        raise ValueError(f"{axis.key}: give at least one value")
    if len(values) > MAX_AXIS_VALUES:
        raise ValueError(f"{axis.key}: {len(values)} values, more than {MAX_AXIS_VALUES}")
    return values


# --------------------------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named sweep.

    ``axes`` maps axis names to their values (crossed); ``fixed`` sets request fields for every cell; ``variants``
    (instead of a product) lists ``(label, field changes)`` cells; ``note`` says where it departs from the defaults.
    """

    name: str
    description: str
    axes: dict[str, tuple] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    variants: tuple[tuple[str, dict[str, Any]], ...] = ()
    note: str = ""
    seed: bool = True  #: one of the seed's run_comparison presets

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "axes": {k: [_jsonable(v) for v in vs] for k, vs in self.axes.items()},
            "fixed": {k: _jsonable(v) for k, v in self.fixed.items()},
            "variants": [label for label, _ in self.variants],
            "note": self.note,
        }


#: How to reproduce the seed's early runs exactly (its defaults then: layer -8, text-only tokens, interpolate).
_SEED_EARLY_FLAGS = "--layers -8 --tokens text --modes interpolate"
_REQUEST = ("Other settings come from the request (defaults: layer -6, full tokens, pool), not from the seed's early "
            "runs, which used layer -8, text-only tokens and interpolate: text-only tokens carry almost no image "
            "information (the seed's own later finding), so those runs showed little; add "
            f"{_SEED_EARLY_FLAGS} to reproduce them.")
_SEED_LATE = {"hidden_layer": -6, "tokens": TokenMode.FULL}

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("alpha", "alpha 0 (baseline), 0.1, 0.3, 0.5, 0.7, 1.0",
           axes={"alpha": (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)},
           note=f"The seed's alphas. {_REQUEST} Alpha 0 is the pure-text baseline, which the seed's run dropped."),
    Preset("layer", "VL hidden layers -2, -4, -8, -16, -24 at alpha 1",
           axes={"layer": (-2, -4, -8, -16, -24)},
           fixed={"alpha": 1.0},
           note=f"The seed's layers at alpha 1. {_REQUEST} Layers deeper than the VL model are refused before "
                "anything runs (the tiny test model has 8)."),
    Preset("token", "token selections full, text, image, image_no_markers at alpha 1",
           axes={"tokens": (TokenMode.FULL, TokenMode.TEXT, TokenMode.IMAGE, TokenMode.IMAGE_NO_MARKERS)},
           fixed={"alpha": 1.0},
           note=f"The seed's token selections at alpha 1. {_REQUEST}"),
    Preset("normalization", "VL normalisation global, per_dim, hybrid (image tokens, alpha 1)",
           axes={"normalization": (Normalization.GLOBAL, Normalization.PER_DIM, Normalization.HYBRID)},
           fixed={"alpha": 1.0, "tokens": TokenMode.IMAGE},
           note=f"The seed's normalisations on image tokens at alpha 1. {_REQUEST}"),
    Preset("outlier", "outlier masking none, zero, clamp, scale (threshold 10, alpha 1)",
           axes={"outlier": (OutlierMode.NONE, OutlierMode.ZERO, OutlierMode.CLAMP, OutlierMode.SCALE)},
           fixed={"alpha": 1.0, "tokens": TokenMode.FULL, "outlier_threshold": 10.0},
           note=f"The seed's masking modes on full tokens at alpha 1. {_REQUEST} The direction comes from the "
                "request (default both); the seed only tested over-dispersion, so its masking never fired."),
    Preset("full", "alpha 0.3/0.5/1 x layer -2/-8/-16 x tokens text/image, plus the baseline",
           axes={"alpha": (0.0, 0.3, 0.5, 1.0), "layer": (-2, -8, -16), "tokens": (TokenMode.TEXT, TokenMode.IMAGE)},
           note="The seed's grid: 18 VL cells + 1 baseline = 19 (within the default cap of 24 cells). The blend mode "
                "comes from the request (the seed used interpolate; add --modes interpolate to reproduce)."),
    Preset("vl_only_vs_qwen3", "pure Qwen3 text vs VL text tokens vs VL full sequence vs a 0.3 blend",
           variants=(
               ("VL text tokens, alpha=1", {"tokens": TokenMode.TEXT, "alpha": 1.0}),
               ("VL full sequence, alpha=1", {"tokens": TokenMode.FULL, "alpha": 1.0}),
               ("blend full, alpha=0.3", {"tokens": TokenMode.FULL, "alpha": 0.3}),
           ),
           fixed={"hidden_layer": -6, "blend_mode": BlendMode.INTERPOLATE},
           note="Seed values: layer -6, interpolate; the pure Qwen3 image is the baseline cell."),
    Preset("style_transfer", "img2img from the reference (strength 0.9), adain_per_dim, alpha 0.3 and 0.5",
           axes={"alpha": (0.3, 0.5)},
           fixed={**_SEED_LATE, "blend_mode": BlendMode.ADAIN_PER_DIM, "strength": 0.9},
           note="Seed values; the baseline is the same img2img without VL, which the seed never made."),
    Preset("blend_comparison", "blend modes adain_per_dim, adain, linear in img2img 0.9 at alpha 0.3",
           axes={"mode": (BlendMode.ADAIN_PER_DIM, BlendMode.ADAIN, BlendMode.LINEAR)},
           fixed={**_SEED_LATE, "alpha": 0.3, "strength": 0.9},
           note="Seed values (see the 'modes' preset for every mode of this project)."),
    Preset("strength_sweep", "img2img strength 0.5, 0.7, 0.9 (adain_per_dim, alpha 0.3)",
           axes={"strength": (0.5, 0.7, 0.9)},
           fixed={**_SEED_LATE, "alpha": 0.3, "blend_mode": BlendMode.ADAIN_PER_DIM},
           note="Seed values; one VL-free img2img baseline per strength."),
    Preset("think_comparison", "empty <think> block off/on in the text prompt (img2img 0.9, adain_per_dim, 0.3)",
           axes={"think": (False, True)},
           fixed={**_SEED_LATE, "alpha": 0.3, "blend_mode": BlendMode.ADAIN_PER_DIM, "strength": 0.9},
           note="Seed values. The think flag now reaches the text encoder per cell (the seed's two images were "
                "identical); one baseline per think setting."),
    # --- this project's modes ---------------------------------------------------------------------------------
    Preset("pool", "pool blend (area-averaged VL) at alpha 0.1, 0.2, 0.3, 0.5, 0.7, 1.0",
           axes={"alpha": (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)}, fixed={"blend_mode": BlendMode.POOL}, seed=False,
           note="Layer, tokens and normalisation from the request (defaults -6, full, global)."),
    Preset("append", "append blend: 16, 32, 64, 128, 256 pooled image tokens after the text",
           axes={"append_tokens": (16, 32, 64, 128, 256)}, fixed={"blend_mode": BlendMode.APPEND}, seed=False,
           note="Alpha from the request: it mixes the appended rows from the prompt's mean row (0) to the "
                "reference's pooled patches (1); the token count sets how much spatial detail is appended."),
    Preset("multilayer", "VL layer -6 alone vs equal mixes -6+-8 and -4+-6+-8",
           axes={"layer": (-6, (LayerWeight(-6), LayerWeight(-8)),
                           (LayerWeight(-4), LayerWeight(-6), LayerWeight(-8)))}, seed=False,
           note="Blend mode, alpha and tokens from the request (defaults pool, 0.3, full)."),
    Preset("modes", "every blend mode at the request's alpha",
           axes={"mode": tuple(BlendMode)}, seed=False,
           note="style_delta subtracts a neutral grey reference's extraction; append adds pooled image rows after the prompt."),
]}


def preset_names() -> list[str]:
    """Preset names in their documented order (the seed's first, then this project's)."""
    return list(PRESETS)


# --------------------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepCell:
    """One image of a sweep.

    ``axes`` holds this cell's value (JSON-safe) for every swept axis (``variant`` for list presets);
    ``baseline`` marks the pure-text (no VL) cells.
    """

    request: StylizeRequest
    label: str
    axes: dict[str, Any]
    baseline: bool = False

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "axes": dict(self.axes), "baseline": self.baseline,
                "params": self.request.record()}


@dataclass(frozen=True)
class SweepPlan:
    """The cells of a sweep; ``axes`` are the axes whose value differs between the non-baseline cells, in order
    (the grid is 2-D when exactly two vary)."""

    cells: list[SweepCell]
    axes: list[str]
    preset: str | None = None
    note: str = ""

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def baselines(self) -> list[SweepCell]:
        return [c for c in self.cells if c.baseline]

    def record(self) -> dict[str, Any]:
        return {"preset": self.preset, "axes": list(self.axes), "note": self.note, "cells": len(self.cells),
                "preset_definition": PRESETS[self.preset].record() if self.preset in PRESETS else None}


def _unknown_preset(name: str) -> ValueError:
    return ValueError(f"sweep must be one of {', '.join(PRESETS)}; got {name!r}")


def plan_sweep(base: StylizeRequest, preset: str | None, overrides: dict[str, Any] | None = None, *,
               max_cells: int) -> SweepPlan:
    """Plan the cells of a sweep.

    Args:
        base: the user's request (prompt, reference, seed, size, steps, and the settings a preset does not fix).
        preset: a name in :data:`PRESETS`, or ``None`` for a sweep made of ``overrides`` alone.
        overrides: axis value lists (keys ``alphas``, ``layers``, ``modes``, ``tokens``, ``normalizations``,
            ``outliers``, ``strengths``, ``steps``, ``thinks``, ``append_tokens``, ``seeds``; singular names work
            too). Each replaces the preset's values for that axis (or its fixed setting), or adds an axis. Values
            may be lists or text (see :func:`parse_values`). ``None`` values are ignored.
        max_cells: the largest number of cells allowed (baselines included).

    Raises ``ValueError`` naming ``sweep`` for an unknown preset or too many cells, or the axis for a bad value.
    """
    if preset is not None:
        preset = str(preset).strip().lower()
        if preset in ("", "none", "custom"):
            preset = None
        elif preset not in PRESETS:
            raise _unknown_preset(preset)
    spec = PRESETS[preset] if preset else Preset("custom", "custom sweep")

    over: dict[str, list[Any]] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        axis = axis_for_key(key)
        if axis.name in over:
            raise ValueError(f"{axis.key}: given twice")
        over[axis.name] = parse_values(axis.key, value)

    # the request every cell starts from: the base, one image per cell, then the preset's fixed fields
    seeds = tuple(base.seeds[:1]) or (0,)
    start = base.replace(seeds=seeds, **spec.fixed)

    variant_fields = {f for _label, changes in spec.variants for f in changes}
    for name in over:
        if AXES[name].field in variant_fields:
            raise ValueError(f"{AXES[name].key}: sweep {spec.name} lists its cells explicitly and fixes "
                             f"{', '.join(sorted(variant_fields))}; choose another preset to vary {AXES[name].key}")

    axes: dict[str, list[Any]] = {name: [AXES[name].parse(v) for v in values] for name, values in spec.axes.items()}
    for name, values in over.items():
        axes[name] = values
    ordered = [n for n in spec.axes if n in axes] + [n for n in AXES if n in axes and n not in spec.axes]
    axes = {n: axes[n] for n in ordered}

    variants: list[tuple[str | None, dict[str, Any]]] = list(spec.variants) or [(None, {})]
    cells: list[SweepCell] = []
    baselines: dict[tuple, tuple[StylizeRequest, dict[str, Any]]] = {}
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        values = dict(zip(names, combo))
        changes = {AXES[n].field: (v,) if n == "seed" else v for n, v in values.items()}
        non_vl = tuple((n, _key(v)) for n, v in values.items() if not AXES[n].vl)
        for vlabel, vchanges in variants:
            request = start.replace(**changes, **vchanges)
            if non_vl not in baselines:  # one baseline per combination of the axes that matter without VL
                baselines[non_vl] = (request, {n: v for n, v in values.items() if not AXES[n].vl})
            if request.alpha == 0.0:  # alpha 0 is the baseline itself, never a VL cell
                continue
            cell_axes = {n: _jsonable(v) for n, v in values.items()}
            if vlabel is not None:
                cell_axes = {"variant": vlabel, **cell_axes}
            cells.append(SweepCell(request=request, label="", axes=cell_axes))

    varying = [n for n in (["variant"] if spec.variants else []) + names
               if len({_key(c.axes[n]) for c in cells}) > 1]
    cells = [SweepCell(c.request, _label(c, varying, spec), c.axes) for c in cells]
    if not cells:
        raise ValueError("alpha: every cell of this sweep has alpha 0 (no reference influence); "
                         "give an alpha above 0")
    base_varying = [n for n in names if not AXES[n].vl and n != "strength"
                    and len({_key(v[n]) for _r, v in baselines.values()}) > 1]
    base_cells = [_baseline(r, {n: v[n] for n in base_varying}) for r, v in baselines.values()]
    out = base_cells + cells
    if len(out) > max_cells:
        raise ValueError(f"sweep: {len(out)} cells ({len(base_cells)} baseline + {len(cells)} VL) is more than the "
                         f"limit of {max_cells}; give fewer values")
    return SweepPlan(cells=out, axes=varying, preset=preset, note=spec.note)


def _key(v: Any) -> Any:
    return repr(v)


def _label(cell: SweepCell, varying: Sequence[str], spec: Preset) -> str:
    parts = []
    for n in varying:
        v = cell.axes[n]
        parts.append(str(v) if n == "variant" else _format(n, v))
    if not parts:  # nothing varies: say what this one VL cell is
        r = cell.request
        parts = [f"alpha={r.alpha:g}", f"mode={r.blend_mode}", AXES["layer"].label(r.hidden_layer)]
    return " | ".join(parts)


def _format(axis: str, value: Any) -> str:
    if axis == "layer" and isinstance(value, list):
        value = tuple(LayerWeight(int(a), float(b)) for a, b in value)
    return AXES[axis].label(value)


def _baseline(request: StylizeRequest, varying: dict[str, Any]) -> SweepCell:
    """The no-VL cell: alpha 0; txt2img drops the reference (nothing to extract), img2img keeps it as the source."""
    if request.strength is None:
        # no reference at all; the blend mode is irrelevant at alpha 0, but reference-only modes (append,
        # style_delta) are refused without a reference, so the baseline names the default mode
        mode = request.blend_mode if request.blend_mode not in (BlendMode.APPEND, BlendMode.STYLE_DELTA) \
            else BlendMode.POOL
        req = request.replace(alpha=0.0, reference=None, blend_mode=mode)
        what = "baseline: text only (alpha=0)"
    else:
        req = request.replace(alpha=0.0)
        what = f"baseline: img2img {request.strength:g} without VL (alpha=0)"
    extra = [_format(n, _jsonable(v)) for n, v in varying.items()]
    label = " | ".join([what, *extra])
    axes = {"alpha": 0.0, **{n: _jsonable(v) for n, v in varying.items()}}
    return SweepCell(request=req, label=label, axes=axes, baseline=True)


def iter_overrides(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Build an overrides dict from ``(key, value)`` pairs, dropping ``None`` values (CLI flags not given)."""
    return {k: v for k, v in items if v is not None}
