"""/sweep and /blendmode: presets and custom value lists through the engine's planner, one labelled grid plus the
per-cell parameters; refusals of bad lists and oversized sweeps before anything is downloaded."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from bot.params import BLEND_MODES
from engine.media.images import read_png_metadata
from engine.types import BlendMode
from tests.bot.harness import make_settings, png, running_bot
from tests.fakediscord import FakeDiscord, InteractionRecord

pytestmark = pytest.mark.timeout(60)


async def grid_of(rec: InteractionRecord) -> tuple[dict, dict]:
    await rec.wait_until(lambda r: any(f.filename == "cells.json" for f in r.files), timeout=20)
    final = next(r for r in rec.accepted if any(f.filename == "cells.json" for f in r.files))
    grid = next(f for f in final.files if f.filename.startswith("zvl-sweep-"))
    cells = json.loads(next(f for f in final.files if f.filename == "cells.json").data)
    Image.open(io.BytesIO(grid.data)).verify()
    return {"grid": grid, "final": final}, cells


def ref(fake: FakeDiscord) -> dict:
    return fake.add_attachment(png(), "ref.png", "image/png")


async def test_custom_alphas_make_a_grid_with_a_baseline(fake: FakeDiscord, bot, pipeline) -> None:
    rec = await fake.dispatch_slash("sweep", {"image": ref(fake), "prompt": "a boat", "alphas": "0.2, 0.6",
                                              "size": "1:1 small", "seed": 3})
    assert (await rec.wait_ack(2)).type == 5
    out, cells = await grid_of(rec)
    labels = [c["label"] for c in cells["cells"]]
    assert len(labels) == 3 and labels[0].startswith("baseline") and labels[1:] == ["alpha=0.2", "alpha=0.6"]
    assert [c["params"]["alpha"] for c in cells["cells"]] == [0.0, 0.2, 0.6]
    assert all(c["params"]["seeds"] == [3] for c in cells["cells"])
    assert read_png_metadata(out["grid"].data)["axes"] == ["alpha"]
    embed = out["final"].data["embeds"][0]
    assert embed["title"] == "Sweep: custom" and embed["image"]["url"] == f"attachment://{out['grid'].filename}"
    assert len(pipeline.requests) == 3


async def test_a_seed_preset_with_an_override(fake: FakeDiscord, bot, pipeline) -> None:
    """The `layer` preset with two of its layers replaced: cells follow the planner, 2 axes -> 2-D labels."""
    rec = await fake.dispatch_slash("sweep", {"image": ref(fake), "preset": "layer", "layers": "-2,-4",
                                              "alphas": "0.5,1", "size": "1:1 small", "steps": 2})
    out, cells = await grid_of(rec)
    assert cells["plan"]["preset"] == "layer" and cells["plan"]["axes"] == ["layer", "alpha"]
    assert len(cells["cells"]) == 5


async def test_bad_value_list_is_refused_before_anything_runs(fake: FakeDiscord, bot) -> None:
    rec = await fake.dispatch_slash("sweep", {"image": ref(fake), "alphas": "0.2,abc"})
    ack = await rec.wait_ack(2)
    assert ack.type == 4 and ack.ephemeral and ack.content == "Bad value list: alphas: 'abc' is not a number"
    assert not any("/cdn/" in r.path for r in fake.requests)


async def test_too_many_cells_is_refused_before_download(fake: FakeDiscord, tmp_path: Path) -> None:
    async with running_bot(make_settings(tmp_path, fake, sweep_max_cells=4)):
        rec = await fake.dispatch_slash("sweep", {"image": ref(fake), "preset": "full"})
        await rec.wait_followups(1)
        refusal = rec.followups[-1]
        assert refusal.ephemeral and "more than the limit of 4" in refusal.content
        assert not any("/cdn/" in r.path for r in fake.requests)


async def test_a_sweep_needs_a_preset_or_a_list(fake: FakeDiscord, bot) -> None:
    rec = await fake.dispatch_slash("sweep", {"image": ref(fake)})
    ack = await rec.wait_ack(2)
    assert ack.ephemeral and "Pick a sweep `preset`" in ack.content


async def test_blendmode_compare_runs_every_mode(fake: FakeDiscord, bot, pipeline) -> None:
    rec = await fake.dispatch_slash("blendmode", {"image": ref(fake), "prompt": "a cat", "size": "1:1 small"},
                                    subcommand="compare")
    out, cells = await grid_of(rec)
    modes = [c["axes"].get("mode") for c in cells["cells"] if not c["baseline"]]
    # the engine's `modes` preset, in its order; adain is out of the default set since issue 14
    assert modes == [m.value for m in BlendMode if m is not BlendMode.ADAIN]
    assert out["final"].data["embeds"][0]["title"] == "Blend mode comparison"


async def test_blendmode_compare_with_chosen_modes(fake: FakeDiscord, bot) -> None:
    rec = await fake.dispatch_slash("blendmode", {"image": ref(fake), "modes": "pool,append", "size": "1:1 small"},
                                    subcommand="compare")
    _out, cells = await grid_of(rec)
    assert [c["axes"].get("mode") for c in cells["cells"] if not c["baseline"]] == ["pool", "append"]


async def test_blendmode_info_and_set(fake: FakeDiscord, bot) -> None:
    info = await fake.dispatch_slash("blendmode", {}, subcommand="info")
    ack = await info.wait_ack(2)
    assert ack.ephemeral and [f["name"] for f in ack.data["embeds"][0]["fields"]] == [m.value for m in BLEND_MODES]
    chosen = await fake.dispatch_slash("blendmode", {"mode": "append"}, subcommand="set")
    assert (await chosen.wait_ack(2)).ephemeral
    assert (await bot.services.store.defaults.get(fake.default_user.id))["blend_mode"] == "append"


async def test_schedules_are_a_sweep_axis(fake: FakeDiscord, bot, pipeline) -> None:
    rec = await fake.dispatch_slash("sweep", {"image": ref(fake), "prompt": "a boat", "schedules": "early,late",
                                              "size": "1:1 small", "steps": 2})
    _out, cells = await grid_of(rec)
    assert cells["plan"]["axes"] == ["schedule"]
    assert [c["params"]["style_schedule"] for c in cells["cells"][1:]] == ["early", "late"]
