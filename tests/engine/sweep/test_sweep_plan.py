"""engine.sweep (axes, presets, plan): every preset planned, the pure-text baseline, overrides, limits and errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.sweep.axes import AXES, format_axis_value, parse_values
from engine.sweep.plan import plan_sweep
from engine.sweep.presets import PRESETS, preset_names
from engine.types import BlendMode, LayerWeight, Normalization, OutlierMode, StylizeRequest, TokenMode

REF = Image.new("RGB", (32, 32), (200, 10, 10))
BASE = StylizeRequest(prompt="a lighthouse on a cliff at dusk", reference=REF, seeds=(42,), steps=9)

#: preset -> (VL cells, baseline cells, varying axes)
EXPECTED = {
    "alpha": (5, 1, ["alpha"]),
    "layer": (5, 1, ["layer"]),
    "token": (4, 1, ["tokens"]),
    "normalization": (3, 1, ["normalization"]),
    "outlier": (4, 1, ["outlier"]),
    "full": (18, 1, ["alpha", "layer", "tokens"]),
    "vl_only_vs_qwen3": (3, 1, ["variant"]),
    "style_transfer": (2, 1, ["alpha"]),
    "blend_comparison": (3, 1, ["mode"]),
    "strength_sweep": (3, 3, ["strength"]),
    "think_comparison": (2, 2, ["think"]),
    "pool": (6, 1, ["alpha"]),
    "append": (5, 1, ["append_tokens"]),
    "multilayer": (3, 1, ["layer"]),
    "modes": (7, 1, ["mode"]),
}


def test_every_preset_is_covered():
    assert set(preset_names()) == set(EXPECTED)
    seed = {"alpha", "layer", "token", "normalization", "outlier", "full", "vl_only_vs_qwen3", "style_transfer",
            "blend_comparison", "strength_sweep", "think_comparison"}
    assert {n for n, p in PRESETS.items() if p.seed} == seed


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_plan(name):
    vl_cells, base_cells, axes = EXPECTED[name]
    plan = plan_sweep(BASE, name, {}, max_cells=64)
    assert plan.preset == name
    assert plan.axes == axes
    baselines = [c for c in plan.cells if c.baseline]
    others = [c for c in plan.cells if not c.baseline]
    assert (len(others), len(baselines)) == (vl_cells, base_cells)
    assert plan.cells[:base_cells] == baselines  # baselines first
    # the pure-text baseline is really pure text: alpha 0, and no reference at all for txt2img
    for c in baselines:
        assert c.request.alpha == 0.0
        assert c.label.startswith("baseline")
        if c.request.strength is None:
            assert c.request.reference is None
        else:
            assert c.request.reference is REF  # img2img source, VL off
    for c in others:
        assert c.request.alpha > 0 and c.request.reference is REF
    labels = [c.label for c in plan.cells]
    assert len(set(labels)) == len(labels) and all(labels)
    for c in plan.cells:
        assert c.request.shift == 3.0  # explicit on every cell (the seed never passed it)
        assert c.request.seeds == (42,)
        assert c.request.prompt == BASE.prompt
        json.dumps(c.axes)  # JSON-safe for metadata.json
        json.dumps(c.record())
    json.dumps(plan.record())


def test_seed_presets_sweep_their_values_with_the_requests_other_settings():
    """The seed's swept values are kept; the other settings are the request's (the seed's early runs used layer -8,
    text-only tokens and interpolate, which carry almost no image information), and the note says how to
    reproduce them."""
    alpha = plan_sweep(BASE, "alpha", {}, max_cells=64)
    assert [c.request.alpha for c in alpha.cells] == [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
    vl_cells = [c.request for c in alpha.cells if not c.baseline]
    assert {(r.hidden_layer, r.tokens, r.blend_mode) for r in vl_cells} == {
        (BASE.hidden_layer, BASE.tokens, BASE.blend_mode)}
    assert "--layers -8 --tokens text --modes interpolate" in PRESETS["alpha"].note
    seedlike = plan_sweep(BASE, "alpha", {"layers": [-8], "tokens": ["text"], "modes": ["interpolate"]}, max_cells=64)
    assert {(c.request.hidden_layer, c.request.tokens, c.request.blend_mode) for c in seedlike.cells
            if not c.baseline} == {(-8, TokenMode.TEXT, BlendMode.INTERPOLATE)}
    layer = plan_sweep(BASE, "layer", {}, max_cells=64)
    assert [c.request.hidden_layer for c in layer.cells if not c.baseline] == [-2, -4, -8, -16, -24]
    st_ = plan_sweep(BASE, "style_transfer", {}, max_cells=64)
    assert {(c.request.strength, c.request.blend_mode, c.request.hidden_layer) for c in st_.cells} == {
        (0.9, BlendMode.ADAIN_PER_DIM, -6)}
    outl = plan_sweep(BASE, "outlier", {}, max_cells=64)
    # the seed's four modes (issue 14 added `mean`, which is not one of them)
    assert [c.request.outlier_mode for c in outl.cells[1:]] == [OutlierMode.NONE, OutlierMode.ZERO, OutlierMode.CLAMP,
                                                                 OutlierMode.SCALE]
    norm = plan_sweep(BASE, "normalization", {}, max_cells=64)
    assert [c.request.normalization for c in norm.cells[1:]] == [Normalization.GLOBAL, Normalization.PER_DIM,
                                                                   Normalization.HYBRID]


def test_alpha_labels_are_full_not_cut():
    plan = plan_sweep(BASE, "full", {}, max_cells=64)
    assert "alpha=0.3 | layer=-16 | tokens=image" in [c.label for c in plan.cells]
    modes = plan_sweep(BASE, "token", {}, max_cells=64)
    assert "tokens=image_no_markers" in [c.label for c in modes.cells]  # 23 chars: the seed cut at 18


def test_think_reaches_the_request():
    plan = plan_sweep(BASE, "think_comparison", {}, max_cells=64)
    vl = [c for c in plan.cells if not c.baseline]
    assert [c.request.think for c in vl] == [False, True]
    assert [c.request.think for c in plan.baselines] == [False, True]
    assert vl[0].request != vl[1].request


def test_multilayer_and_append_and_modes():
    ml = plan_sweep(BASE, "multilayer", {}, max_cells=64)
    assert [c.request.hidden_layer for c in ml.cells[1:]] == [
        -6, (LayerWeight(-6), LayerWeight(-8)), (LayerWeight(-4), LayerWeight(-6), LayerWeight(-8))]
    assert [c.label for c in ml.cells[1:]] == ["layer=-6", "layers=-6+-8", "layers=-4+-6+-8"]
    ap = plan_sweep(BASE, "append", {}, max_cells=64)
    assert {c.request.blend_mode for c in ap.cells[1:]} == {BlendMode.APPEND}
    assert ap.cells[0].request.blend_mode is BlendMode.POOL  # append needs a reference; the baseline has none
    assert [c.request.append_tokens for c in ap.cells[1:]] == [16, 32, 64, 128, 256]
    modes = plan_sweep(BASE, "modes", {}, max_cells=64)
    # adain left out of the default set (issue 14: inert after the DiT's row normalisation)
    assert [c.request.blend_mode for c in modes.cells[1:]] == [m for m in BlendMode if m is not BlendMode.ADAIN]


def test_overrides_replace_preset_axes_and_fixed_settings():
    plan = plan_sweep(BASE, "alpha", {"alphas": [0.2, 0.4], "layers": [-6], "tokens": ["full"]}, max_cells=64)
    assert plan.axes == ["alpha"]
    assert [c.request.alpha for c in plan.cells] == [0.0, 0.2, 0.4]
    assert {c.request.hidden_layer for c in plan.cells[1:]} == {-6}
    assert {c.request.tokens for c in plan.cells[1:]} == {TokenMode.FULL}
    # a value equal to a default is still a value (the seed treated it as "unset")
    bc = plan_sweep(BASE, "blend_comparison", {"modes": ["adain_per_dim", "pool"]}, max_cells=64)
    assert [c.request.blend_mode for c in bc.cells[1:]] == [BlendMode.ADAIN_PER_DIM, BlendMode.POOL]
    # img2img presets can be switched to txt2img
    tx = plan_sweep(BASE, "style_transfer", {"strengths": ["none"]}, max_cells=64)
    assert {c.request.strength for c in tx.cells} == {None}
    assert tx.cells[0].request.reference is None


def test_custom_sweep_two_axes_and_steps():
    plan = plan_sweep(BASE, None, {"alphas": "0.3,0.6", "steps": [2, 4]}, max_cells=64)
    assert plan.axes == ["alpha", "steps"]
    assert len(plan.baselines) == 2  # one per step count
    assert [c.label for c in plan.baselines] == ["baseline: text only (alpha=0) | steps=2",
                                                 "baseline: text only (alpha=0) | steps=4"]
    assert len(plan.cells) == 6


def test_no_preset_no_overrides_is_one_cell_plus_baseline():
    plan = plan_sweep(BASE, None, {}, max_cells=4)
    assert len(plan.cells) == 2 and plan.axes == []
    assert plan.cells[1].label == "alpha=0.3 | mode=pool | layer=-6"


def test_alpha_zero_is_never_a_vl_cell():
    plan = plan_sweep(BASE, None, {"alphas": [0.0, 0.0, 0.5]}, max_cells=8)
    assert [c.request.alpha for c in plan.cells] == [0.0, 0.5]
    with pytest.raises(ValueError, match="alpha"):
        plan_sweep(BASE, "modes", {"alphas": [0]}, max_cells=8)


def test_unknown_preset():
    with pytest.raises(ValueError) as info:
        plan_sweep(BASE, "alphas", {}, max_cells=16)
    msg = str(info.value)
    assert msg.startswith("sweep") and "alpha, layer, token" in msg and "modes" in msg and "'alphas'" in msg


def test_too_many_cells():
    with pytest.raises(ValueError) as info:
        plan_sweep(BASE, "full", {}, max_cells=16)
    msg = str(info.value)
    assert "19" in msg and "16" in msg and msg.startswith("sweep")


@pytest.mark.parametrize("overrides,name", [
    ({"alphas": [1.7]}, "alphas"),
    ({"alphas": ["x"]}, "alphas"),
    ({"layers": [0]}, "layers"),
    ({"layers": ["-6+-6"]}, "layers"),
    ({"modes": ["blur"]}, "modes"),
    ({"tokens": ["pixels"]}, "tokens"),
    ({"normalizations": ["l2"]}, "normalizations"),
    ({"outliers": ["drop"]}, "outliers"),
    ({"strengths": [1.5]}, "strengths"),
    ({"steps": [0]}, "steps"),
    ({"steps": [2.5]}, "steps"),
    ({"append_tokens": [5000]}, "append_tokens"),
    ({"thinks": ["maybe"]}, "thinks"),
    ({"colours": [1]}, "colours"),
    ({"alphas": []}, "alphas"),
    ({"alphas": "0:1:0.001"}, "alphas"),
])
def test_bad_override_values_name_the_axis(overrides, name):
    with pytest.raises(ValueError, match=name):
        plan_sweep(BASE, None, overrides, max_cells=64)


def test_variant_preset_refuses_conflicting_overrides():
    with pytest.raises(ValueError, match="alphas"):
        plan_sweep(BASE, "vl_only_vs_qwen3", {"alphas": [0.5]}, max_cells=64)
    plan = plan_sweep(BASE, "vl_only_vs_qwen3", {"steps": [2, 4]}, max_cells=64)
    assert plan.axes == ["variant", "steps"] and len(plan.cells) == 8


def test_parse_values_forms():
    assert parse_values("alphas", "0.2:0.8:0.2") == [0.2, 0.4, 0.6, 0.8]
    assert parse_values("alphas", ["0.1,0.3", 0.5, "0.1"]) == [0.1, 0.3, 0.5]
    assert parse_values("layers", "-6 -6+-8") == [-6, (LayerWeight(-6), LayerWeight(-8))]
    assert parse_values("layers", ["-6:0.7+-8:0.3"]) == [(LayerWeight(-6, 0.7), LayerWeight(-8, 0.3))]
    assert parse_values("layers", "-8:-2:2") == [-8, -6, -4, -2]
    assert parse_values("token_modes", "text_only,image_only") == [TokenMode.TEXT, TokenMode.IMAGE]
    assert parse_values("strengths", "none 0.9") == [None, 0.9]
    assert parse_values("thinks", "false,true") == [False, True]
    assert format_axis_value("layer", [[-6, 0.7], [-8, 0.3]]) == "layers=-6:0.7+-8:0.3"
    assert format_axis_value("strength", None) == "txt2img"
    assert format_axis_value("mode", "pool") == "mode=pool"


@settings(max_examples=40, deadline=None)
@given(alphas=st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=6),
       steps=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       thinks=st.lists(st.booleans(), min_size=1, max_size=2))
def test_plan_counts_property(alphas, steps, thinks):
    nonzero = {a for a in alphas if a > 0}
    combos = len(set(steps)) * len(set(thinks))
    if not nonzero:
        with pytest.raises(ValueError):
            plan_sweep(BASE, None, {"alphas": alphas, "steps": steps, "thinks": thinks}, max_cells=1000)
        return
    plan = plan_sweep(BASE, None, {"alphas": alphas, "steps": steps, "thinks": thinks}, max_cells=1000)
    assert len(plan.baselines) == combos
    assert len(plan.cells) == combos * (len(nonzero) + 1)
    assert all(c.request.alpha == 0 for c in plan.baselines)
    assert len({c.label for c in plan.cells}) == len(plan.cells)
    assert set(plan.axes) <= set(AXES)
