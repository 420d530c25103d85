"""The sweep planner: one implementation shared by ``python -m engine sweep`` and the bot's ``/sweep``.

A sweep is a list of :class:`SweepCell` s, each one :class:`~engine.types.StylizeRequest` with a label. It is built
from a base request (the user's settings), an optional named preset (:data:`~engine.sweep.presets.PRESETS`) and
per-axis value lists (``overrides``, parsed by :mod:`engine.sweep.axes`) that replace the preset's values for that
axis or add a new axis; the cells are the cross product of the axes. Pure and cheap: no torch, no models.

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
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.sweep.axes import AXES, axis_for_key, axis_value_json, format_axis_value, parse_values
from engine.sweep.presets import PRESETS, Preset, preset_names, unknown_preset
from engine.types import BlendMode, StylizeRequest

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
    "fixed_summary",
]

#: One baseline per combination of the non-VL axis values (by their repr): its request and those values.
_Baselines = dict[tuple, tuple[StylizeRequest, dict[str, Any]]]


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
        """The cell as JSON: label, axis values, baseline flag and the request's record."""
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
        """The pure-text (no VL) cells."""
        return [c for c in self.cells if c.baseline]

    def record(self) -> dict[str, Any]:
        """The plan as JSON (without its cells' requests)."""
        return {"preset": self.preset, "axes": list(self.axes), "note": self.note, "cells": len(self.cells),
                "preset_definition": PRESETS[self.preset].record() if self.preset in PRESETS else None}


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
    name = _preset_name(preset)
    spec = PRESETS[name] if name else Preset("custom", "custom sweep")
    over = _parse_overrides(overrides)
    # the request every cell starts from: the base, one image per cell, then the preset's fixed fields
    start = base.replace(seeds=tuple(base.seeds[:1]) or (0,), **spec.fixed)
    _refuse_variant_axes(spec, over)
    axes = _ordered_axes(spec, over)
    cells, baselines = _cross(start, axes, spec)
    varying = [n for n in (["variant"] if spec.variants else []) + list(axes)
               if len({_key(c.axes[n]) for c in cells}) > 1]
    cells = [SweepCell(c.request, _label(c, varying), c.axes) for c in cells]
    if not cells:
        raise ValueError("alpha: every cell of this sweep has alpha 0 (no reference influence); "
                         "give an alpha above 0")
    base_cells = _baseline_cells(baselines, list(axes))
    if len(base_cells) + len(cells) > max_cells:
        raise ValueError(f"sweep: {len(base_cells) + len(cells)} cells ({len(base_cells)} baseline + {len(cells)} "
                         f"VL) is more than the limit of {max_cells}; give fewer values")
    return SweepPlan(cells=base_cells + cells, axes=varying, preset=name, note=spec.note)


def _preset_name(preset: str | None) -> str | None:
    """The preset's key in :data:`PRESETS`; ``None`` for none / ``custom``; ``ValueError`` for an unknown one."""
    if preset is None:
        return None
    name = str(preset).strip().lower()
    if name in ("", "none", "custom"):
        return None
    if name not in PRESETS:
        raise unknown_preset(name)
    return name


def _parse_overrides(overrides: dict[str, Any] | None) -> dict[str, list[Any]]:
    """Axis name -> parsed values; ``None`` values are skipped, an axis given twice (two spellings) is refused."""
    over: dict[str, list[Any]] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        axis = axis_for_key(key)
        if axis.name in over:
            raise ValueError(f"{axis.key}: given twice")
        over[axis.name] = parse_values(axis.key, value)
    return over


def _refuse_variant_axes(spec: Preset, over: dict[str, list[Any]]) -> None:
    """A list preset fixes its variants' fields: an override may not sweep one of them."""
    variant_fields = {f for _label, changes in spec.variants for f in changes}
    for name in over:
        if AXES[name].field in variant_fields:
            raise ValueError(f"{AXES[name].key}: sweep {spec.name} lists its cells explicitly and fixes "
                             f"{', '.join(sorted(variant_fields))}; choose another preset to vary {AXES[name].key}")


def _ordered_axes(spec: Preset, over: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The preset's axes (overrides replacing their values) in the preset's order, then new axes in AXES order."""
    axes: dict[str, list[Any]] = {name: [AXES[name].parse(v) for v in values] for name, values in spec.axes.items()}
    axes.update(over)
    ordered = [n for n in spec.axes if n in axes] + [n for n in AXES if n in axes and n not in spec.axes]
    return {n: axes[n] for n in ordered}


def _cross(start: StylizeRequest, axes: dict[str, list[Any]], spec: Preset) -> tuple[list[SweepCell], _Baselines]:
    """The unlabelled VL cells of the cross product, and one baseline per combination of the non-VL axes."""
    variants: list[tuple[str | None, dict[str, Any]]] = list(spec.variants) or [(None, {})]
    cells: list[SweepCell] = []
    baselines: _Baselines = {}
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
            cell_axes = {n: axis_value_json(v) for n, v in values.items()}
            if vlabel is not None:
                cell_axes = {"variant": vlabel, **cell_axes}
            cells.append(SweepCell(request=request, label="", axes=cell_axes))
    return cells, baselines


def _baseline_cells(baselines: _Baselines, names: list[str]) -> list[SweepCell]:
    """The baseline cells, labelled by the non-VL axes (other than strength) whose value differs between them."""
    varying = [n for n in names if not AXES[n].vl and n != "strength"
               and len({_key(v[n]) for _r, v in baselines.values()}) > 1]
    return [_baseline(r, {n: v[n] for n in varying}) for r, v in baselines.values()]


def _key(v: Any) -> Any:
    return repr(v)


def _label(cell: SweepCell, varying: Sequence[str]) -> str:
    parts = [format_axis_value(n, cell.axes[n]) for n in varying]
    if not parts:  # nothing varies: say what this one VL cell is
        r = cell.request
        parts = [f"alpha={r.alpha:g}", f"mode={r.blend_mode}", AXES["layer"].label(r.hidden_layer)]
    return " | ".join(parts)


def _baseline(request: StylizeRequest, varying: dict[str, Any]) -> SweepCell:
    """The no-VL cell: alpha 0; txt2img drops the reference (nothing to extract), img2img keeps it as the source."""
    if request.strength is None:
        # no reference at all; the blend mode is irrelevant at alpha 0, but reference-only modes (append,
        # style_delta) are refused without a reference, so the baseline names the default mode
        mode = request.blend_mode if request.blend_mode not in (BlendMode.APPEND, BlendMode.STYLE_DELTA) \
            else BlendMode.POOL
        req = request.replace(alpha=0.0, reference=None, references=(), weights=(), blend_mode=mode)
        what = "baseline: text only (alpha=0)"
    else:
        req = request.replace(alpha=0.0)
        what = f"baseline: img2img {request.strength:g} without VL (alpha=0)"
    extra = [format_axis_value(n, axis_value_json(v)) for n, v in varying.items()]
    label = " | ".join([what, *extra])
    axes = {"alpha": 0.0, **{n: axis_value_json(v) for n, v in varying.items()}}
    return SweepCell(request=req, label=label, axes=axes, baseline=True)


#: The settings a sweep's subtitle names when every VL cell shares them: (axis, read, text).
_SUMMARY_FIELDS: tuple[tuple[str, Any, Any], ...] = (
    ("alpha", lambda r: r.alpha, lambda r: f"alpha {r.alpha:g}"),
    ("mode", lambda r: r.blend_mode, lambda r: f"mode {r.blend_mode}"),
    ("layer", lambda r: r.hidden_layer, lambda r: "layer " + (str(r.hidden_layer) if isinstance(r.hidden_layer, int)
                                                           else "+".join(str(lw.layer) for lw in r.hidden_layer))),
    ("tokens", lambda r: r.tokens, lambda r: f"tokens {r.tokens}"),
    ("normalization", lambda r: r.normalization, lambda r: f"norm {r.normalization}"),
    ("outlier", lambda r: r.outlier_mode, lambda r: f"outlier {r.outlier_mode}"),
    ("strength", lambda r: r.strength, lambda r: "txt2img" if r.strength is None else f"img2img {r.strength:g}"),
    ("steps", lambda r: r.steps, lambda r: f"{r.steps} steps"),
    ("think", lambda r: r.think, lambda r: "think on" if r.think else ""),
    ("seed", lambda r: r.seeds, lambda r: f"seed {r.seeds[0]}"),
)


def fixed_summary(plan: SweepPlan) -> str:
    """The grid's subtitle: the preset, then every setting its VL cells share (``sweep alpha · mode pool · ...``)."""
    cells = [c for c in plan.cells if not c.baseline] or plan.cells
    r0 = cells[0].request
    parts = [f"sweep {plan.preset or 'custom'}"]
    for axis, get, fmt in _SUMMARY_FIELDS:
        if axis not in plan.axes and all(get(c.request) == get(r0) for c in cells):
            text = fmt(r0)
            if text:
                parts.append(text)
    parts += [f"{r0.width}x{r0.height}", f"shift {r0.shift:g}", f"cfg {r0.guidance_scale:g}"]
    return " \u00b7 ".join(parts)
