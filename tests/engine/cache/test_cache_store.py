"""engine.cache.{records,files,store} and engine.models.identity: keys, fingerprints, atomic files, LRU budget,
corruption and crash recovery (MemoryCacheIndex)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

import engine.cache.files as files_mod
from engine.cache.records import cache_key, canonical_json, ref_stats_cache_record, text_cache_record, vl_cache_record
from engine.cache.store import CacheEntry, EmbeddingCache, MemoryCacheIndex
from engine.models.identity import image_fingerprint, model_identity
from engine.types import BlendMode, LayerWeight, TokenMode, VLResult

BASE_VL = dict(
    image_fingerprint="a" * 64,
    text="a red fox",
    layers=-6,
    token_mode="full",
    normalization="global",
    target_std=61.0,
    outlier_mode="none",
    outlier_threshold=10.0,
    outlier_direction="both",
    image_token_budget=1024,
    model_identity="/models/qwen3vl#abc",
    reference_stats=None,
    dtype="bfloat16",
)


def key_of(n: int) -> str:
    return cache_key({"n": n})


def tensors(seed: int, n: int = 64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"embeddings": torch.randn(n, 8, generator=gen)}


def entry_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.safetensors"))


@pytest.fixture
def cache(tmp_path: Path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path / "cache", MemoryCacheIndex(), max_bytes=10_000_000)


# --- keys -------------------------------------------------------------------------------------------------------


def test_canonical_json_is_order_and_spelling_independent() -> None:
    """Key order, tuples vs lists, enums vs their values and -0.0 vs 0.0 give the same canonical text."""
    a = {"b": (1, 2.5), "a": BlendMode.POOL, "z": -0.0}
    b = {"z": 0.0, "a": "pool", "b": [1, 2.5]}
    assert canonical_json(a) == canonical_json(b) == '{"a":"pool","b":[1,2.5],"z":0.0}'
    assert cache_key(a) == cache_key(b)


def test_cache_key_refuses_non_json_values() -> None:
    """NaN and arbitrary objects can't be keyed (they have no stable text)."""
    with pytest.raises(ValueError, match="finite"):
        cache_key({"x": float("nan")})
    with pytest.raises(TypeError, match="JSON values only"):
        cache_key({"x": object()})


VL_CHANGES = [
    ("image_fingerprint", "b" * 64),
    ("text", "a red fox "),
    ("layers", -5),
    ("layers", [(-6, 1.0), (-2, 0.5)]),
    ("think", True),
    ("token_mode", TokenMode.IMAGE),
    ("normalization", "per_dim"),
    ("target_std", 61.5),
    ("outlier_mode", "zero"),
    ("image_token_budget", 512),
    ("image_token_budget", None),
    ("model_identity", "/models/qwen3vl#abd"),
    ("reference_stats", "c" * 64),
    ("dtype", "float32"),
]


@pytest.mark.parametrize(("field", "value"), VL_CHANGES)
def test_each_vl_setting_changes_the_key(field: str, value: object) -> None:
    """Every setting that changes the VL tensor is in the key (the seed's key missed most of them)."""
    assert cache_key(vl_cache_record(**BASE_VL)) != cache_key(vl_cache_record(**{**BASE_VL, field: value}))


@pytest.mark.parametrize(("field", "value"), [("outlier_threshold", 8.0), ("outlier_direction", "high")])
def test_outlier_band_changes_the_key_when_masking_is_on(field: str, value: object) -> None:
    masked = {**BASE_VL, "outlier_mode": "zero"}
    assert cache_key(vl_cache_record(**masked)) != cache_key(vl_cache_record(**{**masked, field: value}))


def test_vl_record_is_canonical() -> None:
    """Issue 14 (audit #30): spellings of one extraction are one key; settings that do not apply leave it."""
    key = cache_key(vl_cache_record(**BASE_VL))
    for layers in ([LayerWeight(-6, 1.0)], [(-6, 2.0)], [LayerWeight(-6, 3.0), LayerWeight(-6, 1.0)]):
        assert cache_key(vl_cache_record(**{**BASE_VL, "layers": layers})) == key
    mix = cache_key(vl_cache_record(**{**BASE_VL, "layers": [(-6, 1.0), (-8, 1.0)]}))
    assert cache_key(vl_cache_record(**{**BASE_VL, "layers": [(-6, 2.0), (-8, 2.0)]})) == mix
    assert cache_key(vl_cache_record(**{**BASE_VL, "layers": [(-8, 0.5), (-6, 0.5), (-4, 0.0)]})) == mix
    # outlier band without masking, target std outside global/hybrid
    assert cache_key(vl_cache_record(**{**BASE_VL, "outlier_threshold": 3.0, "outlier_direction": "low"})) == key
    row = {**BASE_VL, "normalization": "row_rms"}
    assert cache_key(vl_cache_record(**row)) == cache_key(vl_cache_record(**{**row, "target_std": 12.0}))
    assert cache_key(vl_cache_record(**{**BASE_VL, "target_std": 12.0})) != key  # global: it applies
    # think without a text cannot change a prompt-free extraction
    free = {**BASE_VL, "text": None}
    assert cache_key(vl_cache_record(**free)) == cache_key(vl_cache_record(**{**free, "think": True}))


def test_vl_record_normalises_spellings() -> None:
    """Enum members and their string values, ints and floats for std, give one key."""
    same = {**BASE_VL, "token_mode": TokenMode.FULL, "normalization": "GLOBAL", "target_std": 61}
    assert cache_key(vl_cache_record(**BASE_VL)) == cache_key(vl_cache_record(**same))


def test_vl_record_rejects_bad_choices() -> None:
    with pytest.raises(ValueError, match="token_mode must be one of"):
        vl_cache_record(**{**BASE_VL, "token_mode": "everything"})


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": "b"},
        {"layer": -3},
        {"think": True},
        {"model_identity": "m2"},
        {"max_length": 256},
        {"dtype": "float32"},
    ],
)
def test_each_text_setting_changes_the_key(changed: dict) -> None:
    base = dict(prompt="a", layer=-2, think=False, model_identity="m1")
    assert cache_key(text_cache_record(**base)) != cache_key(text_cache_record(**{**base, **changed}))


def test_record_kinds_never_collide() -> None:
    """A text record and a reference-stats record over similar inputs have different keys."""
    text = text_cache_record("a", -2, False, "m1")
    stats = ref_stats_cache_record(model_identity="m1", layer=-2, prompts=["a"])
    other = ref_stats_cache_record(model_identity="m1", layer=-2, prompts=["a", "b"])
    assert len({cache_key(text), cache_key(stats), cache_key(other)}) == 3


def _encode(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    buffer.seek(0)
    return Image.open(buffer)


def test_image_fingerprint_follows_pixels_not_encoding() -> None:
    """The same pixels saved as PNG and BMP (and as a palette-free RGBA copy) share a fingerprint."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (24, 32, 3), generator=gen, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    png, bmp = _encode(image, "PNG"), _encode(image, "BMP")
    assert png.format == "PNG" and bmp.format == "BMP"
    assert image_fingerprint(png) == image_fingerprint(bmp) == image_fingerprint(image)
    assert image_fingerprint(image.convert("RGBA")) == image_fingerprint(image)
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert image_fingerprint(changed) != image_fingerprint(image)
    assert image_fingerprint(image.transpose(Image.Transpose.ROTATE_90)) != image_fingerprint(image)


def test_model_identity_tracks_config_contents(tmp_path: Path) -> None:
    """Same folder, same files: same identity; an edited config or tokenizer file changes it."""
    model = tmp_path / "qwen3vl"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64}')
    (model / "preprocessor_config.json").write_text('{"max_pixels": 1000}')
    (model / "model.safetensors").write_bytes(b"x" * 10)
    first = model_identity(model)
    assert first == model_identity(model) and str(model.resolve()) not in first
    (model / "preprocessor_config.json").write_text('{"max_pixels": 2000}')
    second = model_identity(model)
    assert second != first
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / "tokenizer_config.json").write_text("{}")
    assert model_identity(model) != second


def test_model_identity_refuses_non_model_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        model_identity(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        model_identity(tmp_path)


# --- round trip -------------------------------------------------------------------------------------------------


async def test_round_trip_returns_identical_tensors_and_metadata(cache: EmbeddingCache) -> None:
    """What goes in comes out bit for bit, dtypes included, with its metadata."""
    stored = {
        "embeddings": torch.randn(5, 8),
        "half": torch.randn(3, 4).to(torch.bfloat16),
        "ids": torch.arange(7),
        "view": torch.randn(8, 8).t(),  # non-contiguous input
    }
    meta = {"kinds": ["text"] * 5, "std": 61.25, "nested": {"a": [1, 2]}}
    await cache.put(key_of(1), stored, meta)
    got = await cache.get(key_of(1))
    assert got is not None
    tensors_out, meta_out = got
    assert set(tensors_out) == set(stored)
    for name, tensor in stored.items():
        assert tensors_out[name].dtype == tensor.dtype
        assert torch.equal(tensors_out[name], tensor)
    assert meta_out == meta
    assert (await cache.stats())["hits"] == 1


async def test_vl_result_round_trip(cache: EmbeddingCache) -> None:
    """put_vl/get_vl keep the float32 embeddings and every metadata field of a VLResult."""
    result = VLResult(
        embeddings=torch.randn(6, 8),
        kinds=["marker", "image", "image", "marker", "text", "text"],
        image_span=(1, 3),
        original_std=1.5,
        scaled_std=61.0,
        scale_factor=40.666,
        masked_dimensions=[3, 5],
        masked_ratios={3: 12.5, 5: 0.05},
        settings={"layers": -6, "tokens": "full"},
    )
    key = cache_key(vl_cache_record(**BASE_VL))
    await cache.put_vl(key, result)
    back = await cache.get_vl(key)
    assert back is not None
    assert back.embeddings.dtype == torch.float32 and torch.equal(back.embeddings, result.embeddings)
    assert back.metadata() == result.metadata()
    assert back.image_span == (1, 3) and back.masked_ratios == {3: 12.5, 5: 0.05}


async def test_vl_result_keeps_its_attention_ranking(cache: EmbeddingCache) -> None:
    """append_selection=attention: the prompt's attention per image row travels with the entry, under its own key."""
    result = VLResult(embeddings=torch.randn(4, 8), kinds=["marker", "image", "image", "marker"], image_span=(1, 3),
                      original_std=1.0, scaled_std=1.0, scale_factor=1.0, attention=torch.tensor([0.25, 0.5]))
    key = cache_key(vl_cache_record(**BASE_VL, selection="attention"))
    assert key != cache_key(vl_cache_record(**BASE_VL)) == cache_key(vl_cache_record(**BASE_VL, selection=None))
    await cache.put_vl(key, result)
    back = await cache.get_vl(key)
    assert back is not None and torch.equal(back.attention, result.attention)
    await cache.put_vl(key, VLResult.from_metadata(result.embeddings, result.metadata()))
    assert (await cache.get_vl(key)).attention is None


async def test_miss_and_bad_keys(cache: EmbeddingCache) -> None:
    assert await cache.get(key_of(9)) is None
    assert await cache.get_vl(key_of(9)) is None
    assert (await cache.stats())["misses"] == 2
    with pytest.raises(ValueError, match="64 lowercase hex"):
        await cache.get("../../etc/passwd")


async def test_file_io_runs_off_the_event_loop(cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing and reading files happen in worker threads, not on the loop's thread."""
    seen: list[str] = []
    real_write, real_read = files_mod.write, files_mod.read_verified

    def write(*args: object) -> None:
        seen.append(threading.current_thread().name)
        real_write(*args)  # type: ignore[arg-type]

    def read(*args: object) -> object:
        seen.append(threading.current_thread().name)
        return real_read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(files_mod, "write", write)
    monkeypatch.setattr(files_mod, "read_verified", read)
    await cache.put(key_of(1), tensors(1), {})
    await cache.get(key_of(1))
    assert len(seen) == 2 and threading.main_thread().name not in seen


# --- budget -----------------------------------------------------------------------------------------------------


async def _entry_size(tmp_path: Path) -> int:
    probe = EmbeddingCache(tmp_path / "probe", MemoryCacheIndex(), max_bytes=10_000_000)
    await probe.put(key_of(0), tensors(0), {"m": 1})
    return (await probe.stats())["bytes"]


async def test_lru_eviction_spares_the_recently_used(tmp_path: Path) -> None:
    """Budget for three entries: after touching the oldest, a fourth put evicts the untouched second one."""
    size = await _entry_size(tmp_path)
    cache = EmbeddingCache(tmp_path / "c", MemoryCacheIndex(), max_bytes=3 * size + size // 2)
    for n in (1, 2, 3):
        await cache.put(key_of(n), tensors(n), {"m": n})
    assert await cache.get(key_of(1)) is not None  # touch the oldest
    await cache.put(key_of(4), tensors(4), {"m": 4})
    assert sorted(await cache.index.all_keys()) == sorted(key_of(n) for n in (1, 3, 4))
    assert await cache.get(key_of(2)) is None
    stats = await cache.stats()
    assert stats["evictions"] == 1 and stats["entries"] == 3 and stats["bytes"] <= stats["max_bytes"]
    assert len(entry_files(cache.root)) == 3
    await cache.put(key_of(5), tensors(5), {"m": 5})  # now 3 is the least recently used
    assert sorted(await cache.index.all_keys()) == sorted(key_of(n) for n in (1, 4, 5))


async def test_entry_larger_than_budget_is_not_stored(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c", MemoryCacheIndex(), max_bytes=100)
    await cache.put(key_of(1), tensors(1), {})
    assert (await cache.stats())["entries"] == 0 and entry_files(cache.root) == []


async def test_zero_budget_stores_nothing_and_negative_is_refused(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c", MemoryCacheIndex(), max_bytes=0)
    await cache.put(key_of(1), tensors(1), {})
    assert await cache.get(key_of(1)) is None and entry_files(cache.root) == []
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(tmp_path, MemoryCacheIndex(), max_bytes=-1)


# --- damage and crashes -----------------------------------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_flip_byte, _truncate, Path.unlink, lambda p: p.write_bytes(b"")])
async def test_damaged_file_is_a_miss_and_drops_the_row(cache: EmbeddingCache, damage) -> None:
    """Corrupt, half-written, missing or empty files read as a miss, counted, row and file gone; no exception."""
    await cache.put(key_of(1), tensors(1), {})
    damage(entry_files(cache.root)[0])
    assert await cache.get(key_of(1)) is None
    stats = await cache.stats()
    assert stats["corrupt"] == 1 and stats["misses"] == 1 and stats["entries"] == 0
    assert entry_files(cache.root) == []
    await cache.put(key_of(1), tensors(1), {})  # and the key works again
    assert await cache.get(key_of(1)) is not None


async def test_concurrent_writers_of_one_key_leave_one_valid_entry(cache: EmbeddingCache) -> None:
    """Two puts of the same key racing in one process: one row, one file, and it reads back as one of them."""
    a, b = tensors(1), tensors(2)
    await asyncio.gather(cache.put(key_of(1), a, {"who": "a"}), cache.put(key_of(1), b, {"who": "b"}))
    got = await cache.get(key_of(1))
    assert got is not None
    winner = {"a": a, "b": b}[got[1]["who"]]
    assert torch.equal(got[0]["embeddings"], winner["embeddings"])
    assert len(entry_files(cache.root)) == 1 and (await cache.stats())["entries"] == 1


async def test_concurrent_writers_across_processes(tmp_path: Path) -> None:
    """Two caches (as two processes would) over one root and index: the row always matches a complete file,
    and recover() removes the losing writer's file."""
    index = MemoryCacheIndex()
    first = EmbeddingCache(tmp_path / "c", index, max_bytes=10_000_000)
    second = EmbeddingCache(tmp_path / "c", index, max_bytes=10_000_000)
    a, b = tensors(1), tensors(2)
    await asyncio.gather(first.put(key_of(1), a, {"who": "a"}), second.put(key_of(1), b, {"who": "b"}))
    got = await first.get(key_of(1))
    assert got is not None and torch.equal(got[0]["embeddings"], {"a": a, "b": b}[got[1]["who"]]["embeddings"])
    await EmbeddingCache(tmp_path / "c", index, max_bytes=10_000_000).recover()
    assert len(entry_files(tmp_path / "c")) == 1
    assert await first.get(key_of(1)) is not None


class _KilledIndex(MemoryCacheIndex):
    """Raises on upsert: the process 'dies' after the file is written and before the row is."""

    async def upsert(self, entry: CacheEntry) -> None:
        raise RuntimeError("killed")


async def test_kill_between_file_and_index_write_recovers_consistently(tmp_path: Path) -> None:
    """A file written without its row is removed by recover(); afterwards files and rows agree and it works."""
    root = tmp_path / "c"
    dying = EmbeddingCache(root, _KilledIndex(), max_bytes=10_000_000)
    with pytest.raises(RuntimeError, match="killed"):
        await dying.put(key_of(1), tensors(1), {})
    (root / "ab").mkdir(parents=True, exist_ok=True)
    (root / "ab" / f".{key_of(2)}-half.tmp").write_bytes(b"partial")  # an interrupted temp file too
    assert len(entry_files(root)) == 1

    restarted = EmbeddingCache(root, MemoryCacheIndex(), max_bytes=10_000_000)
    report = await restarted.recover()
    assert report == {"dropped_rows": 0, "removed_files": 1, "removed_temp": 1, "adopted": 0}
    assert entry_files(root) == [] and list(root.glob("*/.*.tmp")) == []
    assert await restarted.get(key_of(1)) is None
    await restarted.put(key_of(1), tensors(1), {})
    assert await restarted.get(key_of(1)) is not None


async def test_recover_can_adopt_complete_orphans(tmp_path: Path) -> None:
    """With adopt_orphans, a complete orphan file is indexed again and returns the right tensor and metadata."""
    root = tmp_path / "c"
    with pytest.raises(RuntimeError):
        await EmbeddingCache(root, _KilledIndex(), max_bytes=10_000_000).put(key_of(1), tensors(1), {"m": 1})
    restarted = EmbeddingCache(root, MemoryCacheIndex(), max_bytes=10_000_000)
    assert (await restarted.recover(adopt_orphans=True))["adopted"] == 1
    got = await restarted.get(key_of(1))
    assert got is not None and torch.equal(got[0]["embeddings"], tensors(1)["embeddings"]) and got[1] == {"m": 1}


async def test_recover_drops_rows_without_files(cache: EmbeddingCache) -> None:
    await cache.put(key_of(1), tensors(1), {})
    await cache.put(key_of(2), tensors(2), {})
    entry_files(cache.root)[0].unlink()
    report = await cache.recover()
    assert report["dropped_rows"] == 1 and (await cache.stats())["entries"] == 1
    remaining = await cache.index.all_entries()
    assert [cache.root / e.path for e in remaining] == entry_files(cache.root)


async def test_replacing_a_key_removes_the_old_file(cache: EmbeddingCache) -> None:
    await cache.put(key_of(1), tensors(1), {"v": 1})
    await cache.put(key_of(1), tensors(2), {"v": 2})
    assert len(entry_files(cache.root)) == 1
    got = await cache.get(key_of(1))
    assert got is not None and got[1] == {"v": 2}


async def test_stats_delete_and_clear(cache: EmbeddingCache) -> None:
    for n in (1, 2, 3):
        await cache.put(key_of(n), tensors(n), {})
    stats = await cache.stats()
    assert set(stats) == {"entries", "bytes", "max_bytes", "hits", "misses", "evictions", "corrupt"}
    assert stats["entries"] == 3 and stats["bytes"] == sum(p.stat().st_size for p in entry_files(cache.root))
    assert await cache.delete(key_of(1)) and not await cache.delete(key_of(1))
    assert await cache.clear() == 2
    assert entry_files(cache.root) == [] and (await cache.stats())["entries"] == 0


async def test_file_header_names_key_and_metadata(cache: EmbeddingCache) -> None:
    """The file is plain safetensors; its header repeats key, kind and metadata (what adoption relies on)."""
    from safetensors import safe_open

    await cache.put(key_of(1), tensors(1), {"m": [1, 2]}, kind="text")
    with safe_open(str(entry_files(cache.root)[0]), "pt") as handle:
        header = handle.metadata()
    assert header["zvl.key"] == key_of(1) and header["zvl.kind"] == "text"
    assert json.loads(header["zvl.meta"]) == {"m": [1, 2]}


async def test_write_failure_is_logged_not_raised(cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk makes put() store nothing; the job that called it carries on."""

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_mod, "write", disk_full)
    await cache.put(key_of(1), tensors(1), {})
    assert (await cache.stats())["entries"] == 0


async def test_get_vl_of_a_non_vl_entry_is_a_dropped_miss(cache: EmbeddingCache) -> None:
    await cache.put(key_of(1), {"other": torch.zeros(2)}, {"shape": [2]})
    assert await cache.get_vl(key_of(1)) is None
    assert (await cache.stats())["corrupt"] == 1 and await cache.index.get(key_of(1)) is None
