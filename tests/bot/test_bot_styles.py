"""bot.styles.StyleBook over a real store and reference folder: codes given, resolved under the scope rules, and
the one-line messages (malformed code, unknown here, weight, expired under retention)."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import UserError
from bot.references import ReferenceStore
from bot.retention import remove_old_files
from bot.store import Store
from bot.styles import StyleBook

G1, G2, ALICE, BOB = 111, 222, 1, 2


@pytest.fixture
async def world(tmp_path: Path):
    store = await Store.open(tmp_path / "zvl.sqlite3")
    references = ReferenceStore(tmp_path / "references", max_bytes=1 << 24, max_pixels=1 << 24)
    yield store, references, StyleBook(store.styles, references, retention_days=30)
    await store.close()


async def _reference(references: ReferenceStore, colour=(200, 40, 40), size=(600, 400)):
    return await references.save(Image.new("RGB", size, colour))


async def test_the_code_is_derived_from_the_server_and_the_stored_content(world):
    _store, references, book = world
    ref = await _reference(references)
    digest = hashlib.sha256(ref.path.read_bytes()).hexdigest()
    code = await book.remember(ref, guild_id=G1, user_id=ALICE)
    assert code == hashlib.sha256(f"zvl-style-code/v1\ng{G1}\n{digest}".encode()).hexdigest()[:8]
    assert await book.remember(ref, guild_id=G1, user_id=BOB) == code  # same server, same image, same code
    assert await book.remember(ref, guild_id=G2, user_id=ALICE) != code  # another server: another code
    dm = await book.remember(ref, guild_id=None, user_id=ALICE)
    assert dm == hashlib.sha256(f"zvl-style-code/v1\nu{ALICE}\n{digest}".encode()).hexdigest()[:8]


async def test_a_code_from_another_server_is_refused_in_one_line(world):
    _store, references, book = world
    code = await book.remember(await _reference(references), guild_id=G1, user_id=ALICE)
    assert (await book.find(code, guild_id=G1, user_id=BOB)).code == code
    with pytest.raises(UserError) as info:
        await book.find(code, guild_id=G2, user_id=ALICE)
    assert str(info.value) == (f"style: there is no style {code} in this server (a code works in the server where "
                               "it was made; see `/style list`).")
    assert (await book.find(code, guild_id=None, user_id=ALICE)).code == code  # her own, in a DM
    with pytest.raises(UserError, match="among your codes"):
        await book.find(code, guild_id=None, user_id=BOB)


@pytest.mark.parametrize(("typed", "needle"), [
    ("hello", "style: “hello” is not a style code; a code is 8 characters 0-9/a-f (e.g. ab12cd34)"),
    ("ab12cd34::x", "style: the weight after “::” must be a number above 0"),
    ("ab12cd34::2", "style: a weight (::2) only matters when several references are mixed"),
])
async def test_malformed_codes_and_weights_are_one_clear_message(world, typed, needle):
    with pytest.raises(UserError) as info:
        await world[2].find(typed, guild_id=G1, user_id=ALICE)
    assert needle in str(info.value) and "\n" not in str(info.value) and str(info.value).endswith(".")


async def test_weight_one_is_the_plain_code(world):
    _store, references, book = world
    code = await book.remember(await _reference(references), guild_id=G1, user_id=ALICE)
    assert (await book.find(f"{code}::1", guild_id=G1, user_id=ALICE)).code == code


async def test_loading_refreshes_the_reference_and_counts_the_use(world):
    _store, references, book = world
    ref = await _reference(references)
    code = await book.remember(ref, guild_id=G1, user_id=ALICE)
    old = time.time() - 10 * 86400
    os.utime(ref.path, (old, old))
    row = await book.find(code, guild_id=G1, user_id=ALICE)
    loaded = await book.load(row)
    assert loaded.sha256 == ref.sha256 and loaded.image.size == (600, 400)
    assert loaded.image.getpixel((5, 5)) == (200, 40, 40)
    assert ref.path.stat().st_mtime > old + 9 * 86400  # its retention age restarts at the reuse
    assert (await book.find(code, guild_id=G1, user_id=ALICE)).uses == 1


async def test_an_expired_reference_is_one_line(world, tmp_path):
    _store, references, book = world
    ref = await _reference(references)
    code = await book.remember(ref, guild_id=G1, user_id=ALICE)
    old = time.time() - 31 * 86400
    os.utime(ref.path, (old, old))
    assert remove_old_files([tmp_path / "references"], 30 * 86400) == 1  # the real retention clean-up
    row = await book.find(code, guild_id=G1, user_id=ALICE)  # the code itself is still known
    with pytest.raises(UserError) as info:
        await book.load(row)
    assert str(info.value) == (f"style: the reference image of style {code} expired under the retention policy "
                               "(references are kept 30 days after their last use); send the image again to get "
                               "a new code.")
    with pytest.raises(UserError, match="expired under the retention policy"):
        await book.thumbnail(row)


async def test_the_thumbnail_is_small(world):
    _store, references, book = world
    ref = await _reference(references, size=(1200, 300))
    row = await book.find(await book.remember(ref, guild_id=G1, user_id=ALICE), guild_id=G1, user_id=ALICE)
    with Image.open(io.BytesIO(await book.thumbnail(row))) as thumb:
        assert thumb.size == (256, 64)


async def test_codes_survive_a_restart(tmp_path):
    """A new store and StyleBook over the same files (what a bot restart builds) resolve the same code."""
    references = ReferenceStore(tmp_path / "references", max_bytes=1 << 24, max_pixels=1 << 24)
    store = await Store.open(tmp_path / "zvl.sqlite3")
    ref = await _reference(references, colour=(1, 2, 3))
    code = await StyleBook(store.styles, references, 30).remember(ref, guild_id=G1, user_id=ALICE)
    await store.close()
    store = await Store.open(tmp_path / "zvl.sqlite3")
    try:
        book = StyleBook(store.styles, ReferenceStore(tmp_path / "references", max_bytes=1 << 24,
                                                      max_pixels=1 << 24), 30)
        loaded = await book.load(await book.find(code, guild_id=G1, user_id=ALICE))
        assert loaded.sha256 == ref.sha256 and loaded.image.getpixel((0, 0)) == (1, 2, 3)
        with pytest.raises(UserError, match="no style"):
            await book.find(code, guild_id=G2, user_id=ALICE)
    finally:
        await store.close()


async def test_forget(world):
    _store, references, book = world
    code = await book.remember(await _reference(references), guild_id=G1, user_id=ALICE)
    with pytest.raises(UserError, match=f"code: you have no style {code} here"):
        await book.forget(code, guild_id=G1, user_id=BOB)
    assert await book.forget(code.upper(), guild_id=G1, user_id=ALICE) == code
    with pytest.raises(UserError, match="no style"):
        await book.find(code, guild_id=G1, user_id=ALICE)
