"""The sweep's axes: one :class:`Axis` per sweepable parameter, and the parsers of their value lists.

Each parser takes one value (a number, a string from the command line or a Discord option, an enum member, a JSON
form) and returns the validated value the request field takes, or raises ``ValueError`` naming the axis key
(``alphas: ...``). :func:`parse_values` turns a whole list or text (``"0.1,0.3"``, a range ``"0.2:0.8:0.2"``) into
values. Pure: no torch, no models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.limits import LIMITS
from engine.types import (
    AppendSelection,
    BlendMode,
    LayerWeight,
    Normalization,
    OutlierMode,
    StyleSchedule,
    TokenMode,
    parse_hidden_layer,
)

__all__ = [
    "AXES",
    "MAX_AXIS_VALUES",
    "TOKEN_ALIASES",
    "Axis",
    "axis_for_key",
    "axis_value_json",
    "format_axis_value",
    "layer_text",
    "parse_layer",
    "parse_values",
]

#: Largest number of values one axis may have (guards against ranges like ``0:1:0.0001``).
MAX_AXIS_VALUES = 64

#: Other spellings of token selections (the seed's names, and "all"); the one table of them.
TOKEN_ALIASES = {"text_only": "text", "image_only": "image", "all": "full"}


def _parse_alpha(v: Any) -> float:
    try:
        a = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"alphas: {v!r} is not a number") from None
    return round(LIMITS["alpha"].check(a, "alphas"), 6)


def _layer_number(x: Any) -> int:
    """One layer counted from the end (``-6``, ``"-6"``, ``-6.0``) within ``LIMITS["layer"]``."""
    if isinstance(x, bool):
        raise ValueError(f"layers: {x!r} is not a layer number")
    try:
        f = float(str(x).strip()) if isinstance(x, str) else float(x)
    except (TypeError, ValueError):
        raise ValueError(f"layers: {x!r} is not a layer number (use -6, or -6+-8 for a mix)") from None
    if not math.isfinite(f) or f != int(f) or int(f) > -1:
        raise ValueError(f"layers: layers count from the end and must be -1 or lower; got {x!r}")
    return LIMITS["layer"].check(int(f), "layers")  # type: ignore[no-any-return]


def _layer_weight(x: Any) -> float:
    try:
        w = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"layers: layer weight {x!r} is not a number") from None
    return LIMITS["layer_weight"].check(w, "layers: layer weight")  # type: ignore[no-any-return]


def _mix_from_text(text: str) -> tuple[LayerWeight, ...]:
    """``"-6+-8"`` (equal weights) or ``"-6:0.7+-8:0.3"``."""
    items = []
    for part in (p for p in text.split("+") if p):
        layer, _, weight = part.partition(":")
        items.append(LayerWeight(_layer_number(layer), _layer_weight(weight) if weight else 1.0))
    return tuple(items)


def _mix_from_items(values: list | tuple) -> tuple[LayerWeight, ...]:
    """A list of :class:`LayerWeight` s, ``(layer, weight)`` pairs or plain layers (weight 1)."""
    items = []
    for x in values:
        if isinstance(x, LayerWeight):
            items.append(LayerWeight(_layer_number(x.layer), _layer_weight(x.weight)))
        elif isinstance(x, (list, tuple)) and len(x) == 2:
            items.append(LayerWeight(_layer_number(x[0]), _layer_weight(x[1])))
        else:
            items.append(LayerWeight(_layer_number(x), 1.0))
    return tuple(items)


def parse_layer(v: Any) -> int | tuple[LayerWeight, ...]:
    """``-6``; ``"-6+-8"`` (equal weights) or ``"-6:0.7+-8:0.3"``; a list/tuple of ints, ``(layer, weight)`` pairs or
    :class:`LayerWeight` s. A one-layer mix of weight 1 is that layer."""
    if isinstance(v, str):
        text = v.strip().replace(" ", "")
        if "+" not in text.lstrip("+"):
            return _layer_number(text)
        mix = _mix_from_text(text)
    elif isinstance(v, (list, tuple)):
        mix = _mix_from_items(v)
    else:
        return _layer_number(v)
    if len(mix) == 1 and mix[0].weight == 1.0:
        return mix[0].layer
    if not mix:
        raise ValueError("layers: an empty layer mix")
    if len({lw.layer for lw in mix}) != len(mix):
        raise ValueError(f"layers: a layer appears twice in the mix {layer_text(mix)}")
    if sum(lw.weight for lw in mix) <= 0:
        raise ValueError(f"layers: the weights of {layer_text(mix)} sum to 0")
    return mix


def layer_text(v: int | tuple[LayerWeight, ...]) -> str:
    """``-6``, ``-6+-8`` (equal weights) or ``-6:0.7+-8:0.3``: the text form :func:`parse_layer` reads back."""
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


def axis_value_json(v: Any) -> Any:
    """The JSON form of one parsed axis value (what a cell's ``axes`` hold): a layer mix becomes ``[[layer, weight],
    ...]``, an enum its value; anything else is kept as it is, so :func:`format_axis_value` labels it the same."""
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


#: Every axis, in the order cells are crossed when a sweep adds several.
AXES: dict[str, Axis] = {a.name: a for a in [
    Axis("alpha", "alphas", "alpha", _parse_alpha, lambda v: f"alpha={v:g}", vl=True, numeric=True),
    Axis("layer", "layers", "hidden_layer", parse_layer,
         lambda v: f"layer={v}" if isinstance(v, int) else f"layers={layer_text(v)}", vl=True, numeric=True,
         aliases=("hidden_layers",)),
    Axis("mode", "modes", "blend_mode", _parse_enum(BlendMode, "modes"), lambda v: f"mode={v}", vl=True,
         aliases=("blend_modes",)),
    Axis("tokens", "tokens", "tokens", _parse_enum(TokenMode, "tokens", TOKEN_ALIASES), lambda v: f"tokens={v}",
         vl=True, aliases=("token_modes",)),
    Axis("normalization", "normalizations", "normalization", _parse_enum(Normalization, "normalizations"),
         lambda v: f"norm={v}", vl=True, aliases=("normalization_modes",)),
    Axis("outlier", "outliers", "outlier_mode", _parse_enum(OutlierMode, "outliers"), lambda v: f"outlier={v}",
         vl=True, aliases=("outlier_modes", "outlier_masking")),
    Axis("append_tokens", "append_tokens", "append_tokens", _parse_int("append_tokens", "append_tokens"),
         lambda v: f"append={v}", vl=True, numeric=True),
    Axis("selection", "selections", "append_selection", _parse_enum(AppendSelection, "selections"),
         lambda v: f"select={v}", vl=True, aliases=("append_selections",)),
    Axis("schedule", "schedules", "style_schedule", _parse_enum(StyleSchedule, "schedules"),
         lambda v: f"schedule={v}", vl=True, aliases=("style_schedules",)),
    Axis("strength", "strengths", "strength", _parse_strength,
         lambda v: "txt2img" if v is None else f"strength={v:g}", vl=False, numeric=True),
    Axis("steps", "steps", "steps", _parse_int("steps", "steps"), lambda v: f"steps={v}", vl=False, numeric=True),
    Axis("think", "thinks", "think", _parse_bool, lambda v: f"think={'on' if v else 'off'}", vl=False,
         aliases=("think_modes",)),
    Axis("seed", "seeds", "seeds", _parse_int("seeds", "seed"), lambda v: f"seed={v}", vl=False,
         numeric=True),
]}

#: Every accepted overrides key (name, key, aliases) -> axis name.
_KEY_TO_AXIS: dict[str, str] = {k: a.name for a in AXES.values() for k in (a.name, a.key, *a.aliases)}


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
    if axis == "layer" and isinstance(value, list):  # the JSON form of a mix: [[layer, weight], ...]
        value = parse_hidden_layer(value)
    return AXES[axis].label(value)


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


def _raw_items(axis: Axis, spec: Any) -> list[Any]:
    """The items of ``spec`` before parsing: text split at commas/spaces, a list flattened, one value as a list."""
    if isinstance(spec, str):
        return _split_items(spec)
    if not isinstance(spec, (list, tuple)):
        return [spec]
    if axis.name == "layer" and spec and all(isinstance(x, LayerWeight) for x in spec):
        return [spec]  # a list of LayerWeight s is one layer mix: one value
    raw: list[Any] = []
    for item in spec:
        raw.extend(_split_items(item) if isinstance(item, str) else [item])
    return raw


def parse_values(key: str, spec: Any) -> list[Any]:
    """Validate a list of values for one axis; ``spec`` may be a list, one value, or text.

    Text forms: ``"0.1,0.3,0.5"`` or ``"0.1 0.3 0.5"``; a range ``"0.2:0.8:0.2"`` (inclusive, numeric axes); layer
    mixes ``"-6+-8"`` / ``"-6:0.7+-8:0.3"``. Duplicates are dropped (first kept). ``ValueError`` naming the axis.
    """
    axis = axis_for_key(key)
    values: list[Any] = []
    for item in _raw_items(axis, spec):
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
