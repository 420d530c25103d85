"""The named experiment presets of a sweep: the seed's ``run_comparison.py`` presets first, then this project's.

The seed's presets keep the seed's values, including its earlier fixed settings (layer -8, ``text`` tokens,
``interpolate``) that differ from this project's defaults (layer -6, ``full``, ``pool``); each such preset says so
in its ``note``, and any of those settings can be replaced with a one-value override (``layers=[-6]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.sweep.axes import axis_value_json
from engine.types import BlendMode, LayerWeight, Normalization, OutlierMode, TokenMode

__all__ = ["PRESETS", "Preset", "preset_names", "unknown_preset"]


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
        """The preset as JSON (what a sweep's metadata.json stores as ``preset_definition``)."""
        return {
            "name": self.name,
            "description": self.description,
            "axes": {k: [axis_value_json(v) for v in vs] for k, vs in self.axes.items()},
            "fixed": {k: axis_value_json(v) for k, v in self.fixed.items()},
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
#: What changed for the seed's img2img presets in issue 14.
_STRENGTH = ("Strength is now the start noise level: at 0.9 the reference keeps 10% of the start image at any step "
             "count. Until issue 14 diffusers' rule started every strength above 8/9 at 9 steps from pure noise, so "
             "these cells ignored the reference (two references gave the same image).")

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
           note=f"The seed's normalisations on image tokens at alpha 1. {_REQUEST} This project's default, row_rms, "
                "is not among them: add --normalizations row_rms,global,per_dim,hybrid to compare."),
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
           note=f"Seed values; the baseline is the same img2img without VL, which the seed never made. {_STRENGTH}"),
    Preset("blend_comparison", "blend modes adain_per_dim, adain, linear in img2img 0.9 at alpha 0.3",
           axes={"mode": (BlendMode.ADAIN_PER_DIM, BlendMode.ADAIN, BlendMode.LINEAR)},
           fixed={**_SEED_LATE, "alpha": 0.3, "strength": 0.9},
           note=f"Seed values (see the 'modes' preset for this project's modes). {_STRENGTH}"),
    Preset("strength_sweep", "img2img strength 0.5, 0.7, 0.9 (adain_per_dim, alpha 0.3)",
           axes={"strength": (0.5, 0.7, 0.9)},
           fixed={**_SEED_LATE, "alpha": 0.3, "blend_mode": BlendMode.ADAIN_PER_DIM},
           note=f"Seed values; one VL-free img2img baseline per strength. {_STRENGTH}"),
    Preset("think_comparison", "empty <think> block off/on in the text prompt (img2img 0.9, adain_per_dim, 0.3)",
           axes={"think": (False, True)},
           fixed={**_SEED_LATE, "alpha": 0.3, "blend_mode": BlendMode.ADAIN_PER_DIM, "strength": 0.9},
           note="Seed values. The think flag now reaches the text encoder per cell (the seed's two images were "
                f"identical); one baseline per think setting. VL renders the same think block, so its rows stay "
                f"aligned with the text's. {_STRENGTH}"),
    # --- this project's modes ---------------------------------------------------------------------------------
    Preset("pool", "pool blend (area-averaged VL) at alpha 0.1, 0.2, 0.3, 0.5, 0.7, 1.0",
           axes={"alpha": (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)}, fixed={"blend_mode": BlendMode.POOL}, seed=False,
           note="Layer, tokens and normalisation from the request (defaults -6, full, row_rms: under row_rms alpha is "
                "the VL share of each row, whatever the prompt's length)."),
    Preset("append", "append blend: 16, 32, 64, 128, 256 pooled image tokens after the text",
           axes={"append_tokens": (16, 32, 64, 128, 256)}, fixed={"blend_mode": BlendMode.APPEND}, seed=False,
           note="Alpha from the request: round(alpha * K) rows are appended (none near 0), each a 2-D area pool of "
                "the image grid; K is the count at alpha 1 and sets how much spatial detail is appended. (Before "
                "issue 14 alpha mixed K rows from the prompt's mean row, a jump at alpha 0.)"),
    Preset("multilayer", "VL layer -6 alone vs equal mixes -6+-8 and -4+-6+-8",
           axes={"layer": (-6, (LayerWeight(-6), LayerWeight(-8)),
                           (LayerWeight(-4), LayerWeight(-6), LayerWeight(-8)))}, seed=False,
           note="Blend mode, alpha and tokens from the request (defaults pool, 0.3, full)."),
    Preset("modes", "every blend mode but adain at the request's alpha",
           axes={"mode": tuple(m for m in BlendMode if m is not BlendMode.ADAIN)}, seed=False,
           note="style_delta subtracts a neutral grey reference's extraction; append adds pooled image rows after "
                "the prompt; replace makes the reference's sequence the caption. adain is left out: after the DiT's "
                "row normalisation it carries at most one number per row (ask for it with modes=adain)."),
]}


def preset_names() -> list[str]:
    """Preset names in their documented order (the seed's first, then this project's)."""
    return list(PRESETS)



def unknown_preset(name: str) -> ValueError:
    """The error for a preset name that is not in :data:`PRESETS`."""
    return ValueError(f"sweep must be one of {', '.join(PRESETS)}; got {name!r}")
