"""bot.store.styles: rows survive reopening the database (a restart), and the scope rules of a code."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.store import Store, scope_of

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
G1, G2, ALICE, BOB = 111, 222, 1, 2


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "zvl.sqlite3")
    yield store
    await store.close()


def _at(minute: int) -> datetime:
    return datetime(2026, 12, 1, 12, minute, tzinfo=timezone.utc)


async def _add(store, guild, user, code="ab12cd34", sha=SHA_A, minute=0):
    return await store.styles.add(scope_of(guild, user), code, user, guild, sha, f"/refs/{sha}.png", (64, 48),
                                  now=_at(minute))


async def test_a_code_survives_reopening_the_database(tmp_path):
    path = tmp_path / "zvl.sqlite3"
    first = await Store.open(path)
    await _add(first, G1, ALICE)
    await first.close()
    again = await Store.open(path)  # the migration is not applied twice; the row is there
    try:
        row = await again.styles.find("ab12cd34", guild_id=G1, user_id=ALICE)
        assert row is not None and row.reference_sha256 == SHA_A and (row.width, row.height) == (64, 48)
        assert row.reference_record() == {"sha256": SHA_A, "path": f"/refs/{SHA_A}.png", "size": [64, 48]}
    finally:
        await again.close()


async def test_a_code_works_in_its_server_only(store):
    await _add(store, G1, ALICE)
    assert (await store.styles.find("ab12cd34", guild_id=G1, user_id=BOB)) is not None  # anyone in that server
    assert (await store.styles.find("ab12cd34", guild_id=G2, user_id=ALICE)) is None  # not elsewhere, even for her
    assert (await store.styles.find("ab12cd34", guild_id=G2, user_id=BOB)) is None


async def test_in_direct_messages_only_ones_own_codes_resolve(store):
    await _add(store, G1, ALICE)
    assert (await store.styles.find("ab12cd34", guild_id=None, user_id=ALICE)) is not None
    assert (await store.styles.find("ab12cd34", guild_id=None, user_id=BOB)) is None
    await _add(store, None, BOB, code="00ff00ff", sha=SHA_B)  # made in a DM: scoped to Bob
    row = await store.styles.find("00ff00ff", guild_id=None, user_id=BOB)
    assert row is not None and row.scope == f"u{BOB}" and row.guild_id is None
    assert (await store.styles.find("00ff00ff", guild_id=G1, user_id=BOB)) is None


async def test_a_collision_never_takes_over_another_reference(store):
    assert await _add(store, G1, ALICE) is not None
    assert await _add(store, G1, BOB, sha=SHA_B) is None  # same code, another image, same server
    row = await store.styles.find("ab12cd34", guild_id=G1, user_id=BOB)
    assert row is not None and row.reference_sha256 == SHA_A
    assert await _add(store, G2, BOB, sha=SHA_B) is not None  # another server: no clash


async def test_list_use_and_forget(store):
    await _add(store, G1, ALICE, minute=1)
    await _add(store, G1, BOB, minute=2)  # Bob sent the same image: the same code, his own row
    await _add(store, G1, ALICE, code="12345678", sha=SHA_B, minute=3)
    assert [r.code for r in await store.styles.list_for(ALICE, G1)] == ["12345678", "ab12cd34"]
    assert await store.styles.list_for(ALICE, G2) == []
    row = await store.styles.find("ab12cd34", guild_id=G1, user_id=ALICE)
    assert row.owner_id == ALICE  # one's own row first
    await store.styles.used(row, now=_at(4))
    await store.styles.used(row, now=_at(5))
    assert (await store.styles.find("ab12cd34", guild_id=G1, user_id=ALICE)).uses == 2
    assert [r.code for r in await store.styles.list_for(ALICE, G1)][0] == "ab12cd34"  # most recently used first

    assert await store.styles.forget("ab12cd34", guild_id=G2, user_id=ALICE) is False  # not from another server
    assert await store.styles.forget("ab12cd34", guild_id=G1, user_id=ALICE) is True
    assert await store.styles.forget("ab12cd34", guild_id=G1, user_id=ALICE) is False
    still = await store.styles.find("ab12cd34", guild_id=G1, user_id=ALICE)
    assert still is not None and still.owner_id == BOB  # Bob's row of the shared code stays
    assert [r.code for r in await store.styles.list_for(ALICE, None)] == ["12345678"]  # all hers, from a DM
