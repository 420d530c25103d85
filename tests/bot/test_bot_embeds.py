"""bot.ui.embeds: rendering stays within Discord's embed limits; long prompts are cut and flagged."""

from __future__ import annotations

import discord
import pytest

from bot.params import BLEND_MODES, SEVERAL_REFERENCES
from bot.ui.embeds import (
    DESCRIPTION,
    FIELD_VALUE,
    TITLE,
    TOTAL,
    embed_size,
    fit_embed,
    info_embed,
    job_line,
    modes_embed,
    result_embed,
    status_line,
    truncate,
)
from engine.serving.events import EventKind, ProgressEvent

RESOLVED = {"style_weight": 100.0, "alpha": 0.3, "blend_mode": "pool", "layer": -6, "tokens": "full", "seed": 7,
            "steps": 9, "width": 1248, "height": 832, "normalization": "global", "outlier_mode": "none"}


def within_limits(embed: discord.Embed) -> bool:
    return (len(embed.title or "") <= TITLE and len(embed.description or "") <= DESCRIPTION
            and all(len(f.value) <= FIELD_VALUE and len(f.name) <= 256 for f in embed.fields)
            and len(embed.fields) <= 25 and embed_size(embed) <= TOTAL)


def test_result_embed_shows_every_parameter_seed_and_timings() -> None:
    rendered = result_embed(job_id="a" * 32, prompt="a fox", resolved=RESOLVED, strength=0.8, preset="ink",
                            timings={"queue": 0.4, "vl": 1.2, "dit": 3.0, "total": 4.5})
    fields = {f.name: f.value for f in rendered.embed.fields}
    assert fields["Seed"] == "7" and fields["Style weight"] == "100 (alpha 0.3)" and fields["Preset"] == "ink"
    assert fields["Size"] == "3:2 (1248×832)" and fields["Img2img strength"] == "0.8"
    assert "DiT 3.0 s" in fields["Timings"] and "total 4.5 s" in fields["Timings"]
    assert not rendered.truncated and within_limits(rendered.embed)


def test_long_prompt_is_cut_and_flagged_for_the_json() -> None:
    """A 6000-character prompt: the embed stays valid and says the full parameters must be attached."""
    rendered = result_embed(job_id="b" * 32, prompt="word " * 1200, resolved=RESOLVED, strength=None, preset=None,
                            timings={})
    assert rendered.truncated and rendered.embed.description.endswith("…")
    assert within_limits(rendered.embed)


def test_fit_embed_enforces_every_limit() -> None:
    embed = discord.Embed(title="t" * 300, description="d" * 5000)
    for i in range(30):
        embed.add_field(name=f"n{i}" * 100, value="v" * 2000)
    embed.set_footer(text="f" * 3000)
    fitted, cut = fit_embed(embed)
    assert cut and within_limits(fitted)


def test_truncate() -> None:
    assert truncate("abc", 3) == "abc" and truncate("abcd", 3) == "ab…"


@pytest.mark.parametrize("event, expected", [
    (ProgressEvent("j", EventKind.QUEUED, position=3, eta_s=12.0), "#3 in line, about 12.0 s"),
    (ProgressEvent("j", EventKind.STARTED), "Starting"),
    (ProgressEvent("j", EventKind.VL_STARTED, device="cpu"), "on cpu"),
    (ProgressEvent("j", EventKind.STEP, step=4, total=9, cell=1, cells=6), "Step 4/9 · cell 2/6"),
    (ProgressEvent("j", EventKind.CELL_DONE, cells_done=2, cells=6), "2/6 cells"),
    (ProgressEvent("j", EventKind.FAILED, message="the GPU ran out of memory"), "Failed: the GPU ran out"),
    (ProgressEvent("j", EventKind.CANCELLED, message="cancelled by its owner"), "cancelled by its owner"),
])
def test_status_lines(event: ProgressEvent, expected: str) -> None:
    assert expected in status_line(event)


def test_modes_embed_covers_every_mode_in_one_mapping() -> None:
    embed = modes_embed()
    assert [f.name for f in embed.fields] == [m.value for m in BLEND_MODES]
    assert [f.value for f in embed.fields] == [f"{text} *Several references:* {SEVERAL_REFERENCES[m]}"
                                               for m, (_short, text) in BLEND_MODES.items()]
    assert within_limits(embed)
    assert modes_embed("append").fields[0].name == "append"
    with pytest.raises(ValueError, match="mode must be one of"):
        modes_embed("sharpen")


def test_info_embed_and_job_lines() -> None:
    embed = info_embed("Jobs", [job_line("c" * 32, "stylize", "x" * 500, position=2, eta_s=3.0)] * 200)
    assert within_limits(embed)
    line = job_line("d" * 32, "sweep", "", status="failed", error="boom")
    assert line == "`dddddddd` sweep “(no prompt)”: failed (boom)"
