"""The real bot process: fair turns between users, and /admin reload with a queue that loses nothing."""

from __future__ import annotations

import re

import pytest

from engine.media.images import read_png_metadata
from tests.e2e.botproc import job_id_of, result_file, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

QUEUED = re.compile(r"^⏳ Queued: #(\d+) in line")


async def queued_position(rec) -> int:
    """The position the status message showed when the job was queued."""
    await rec.wait_ack(3)
    await rec.wait_until(lambda r: any(QUEUED.match(q.content or "") for q in r.edits), timeout=30)
    return int(next(QUEUED.match(q.content) for q in rec.edits if QUEUED.match(q.content or "")).group(1))


async def test_three_users_take_fair_turns(space) -> None:
    """While the worker is paused A asks for 3 images, B for 2, C for 1: the positions shown interleave, and after
    /admin resume the jobs finish A B C A B A."""
    users = {name: space.member(name) for name in "ABC"}
    await space.pause()
    recs, positions = [], []
    for name in "AAABBC":
        rec = await space.stylize(users[name], prompt=f"{name}{sum(n == name for n, _ in recs) + 1}")
        positions.append(await queued_position(rec))  # one at a time: the submit order is the order above
        recs.append((name, rec))
    assert positions == [1, 2, 3, 2, 4, 3], positions
    await space.resume()
    for _name, rec in recs:
        await wait_result(rec, timeout=120)

    rows = {row["id"]: row for row in space.bot.jobs("guild_id = ?", (space.guild.id,))}
    finished = sorted(rows.values(), key=lambda r: r["finished_at"])
    assert [r["params"]["prompt"] for r in finished] == ["A1", "B1", "C1", "A2", "B2", "A3"]
    started = sorted(rows.values(), key=lambda r: r["started_at"])
    assert [r["params"]["prompt"] for r in started] == ["A1", "B1", "C1", "A2", "B2", "A3"]
    for _name, rec in recs:  # every result reached its own status message
        meta = read_png_metadata(result_file(rec).data)
        assert meta["job_id"] == job_id_of(rec) and rows[meta["job_id"]]["status"] == "done"


async def test_admin_reload_during_a_queue_loses_nothing(space) -> None:
    """Five jobs queued, the worker resumed and /admin reload sent at once: reload waits for the running job,
    reloads every model, and all five jobs still complete and are delivered."""
    users = [space.member("r1"), space.member("r2")]
    await space.pause()
    recs = []
    for i in range(5):
        rec = await space.stylize(users[i % 2], prompt=f"reload {i}", size="1:1 small", steps=12)
        await queued_position(rec)
        recs.append(rec)
    await space.resume()
    text = await space.admin_call("reload", {"component": "all"}, timeout=120)
    assert text.startswith("✅ Reloaded all"), text
    waiting = int(re.search(r"\((\d+) job\(s\) waiting\)", text).group(1))
    assert 1 <= waiting <= 5, text
    for rec in recs:
        await wait_result(rec, timeout=120)
    rows = space.bot.jobs("guild_id = ?", (space.guild.id,))
    assert sorted(r["params"]["prompt"] for r in rows) == [f"reload {i}" for i in range(5)]
    assert {r["status"] for r in rows} == {"done"}
    assert all(r["attempts"] == 1 for r in rows), [r["attempts"] for r in rows]
