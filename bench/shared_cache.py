"""Shared embedding cache (issue 17): a local miss served by the shared Redis tier vs a local hit vs a full miss.

    python bench/shared_cache.py [--quick] [--reps N] [--side PX] [--json PATH] [--threads N]

Each round plays two workers (two ``TieredCache`` over one ``redis-server``, local caches in their own folders):

* **full miss**: worker A sees the reference first: key, local miss, Redis miss, the Qwen3-VL extraction in a
  thread, then the put to both tiers (``bench/cache.py``'s ``encode_stage``, the worker's steps);
* **shared hit**: worker B asks for the same reference (a copy of the image): local miss, Redis ``GETEX``, the
  checks, the write to B's local cache;
* **local hit**: B asks again: its local cache answers.

The three are timed in one run, in that order each round (each depends on the one before), from an empty Redis and
empty local caches, and the ratios are medians of per-round ratios. The VL forwards of the two hits are counted
(both must be 0) and their embeddings compared with the miss's. The Redis is a local ``redis-server`` (no
persistence, ``allkeys-lru``) on a unix socket, so the figures hold no network: over a 1 Gb/s link add about 12 ms
per 1.4 MB entry. The model is ``bench/cache.py``'s (``vl_layer_stop.py``'s real-depth random Qwen3-VL, 1024 image
tokens); ``--quick`` uses ``engine.models.tiny`` and a 64 px reference.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from cache import encode_stage  # noqa: E402
from vl_layer_stop import FULL_VL  # noqa: E402

NAME = "shared_cache"


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A cache Redis as the README describes one (allkeys-lru, a maxmemory, no persistence), answering PING."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("shared_cache: redis-server is not installed (apt-get install -y redis-server)")
    sock = folder / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                             "--dir", str(folder), "--save", "", "--appendonly", "no", "--maxmemory", "512mb",
                             "--maxmemory-policy", "allkeys-lru"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping():
                return proc, f"unix://{sock}"
        except (redis.exceptions.ConnectionError, FileNotFoundError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("shared_cache: redis-server did not start") from None
        time.sleep(0.02)


def tiered(root: Path, url: str):
    from engine.cache.redis_tier import RedisTier
    from engine.cache.shared import TieredCache
    from engine.cache.store import EmbeddingCache, MemoryCacheIndex

    return TieredCache(EmbeddingCache(root, MemoryCacheIndex(), 2 << 30), RedisTier(url))


def build_pipeline(root: Path, quick: bool):
    from engine.generation.pipeline import StylePipeline

    if quick:
        from engine.models.tiny import make_tiny

        paths = make_tiny(root / "models")
    else:
        paths = {"zimage": C.build_zimage_folder(root / "models" / "zimage", cap_dim=FULL_VL["hidden"]),
                 "qwen3vl": C.build_vl_folder(root / "models" / "qwen3vl", **FULL_VL)}
    pipe = StylePipeline.from_pretrained(paths["zimage"], paths["qwen3vl"], device="cpu", vl_device="cpu",
                                         text_device="cpu", dtype="auto", vl_max_image_tokens=1024)
    pipe.load("vl")
    return pipe


async def one_round(pipe, root: Path, url: str, request, identities: dict, calls: dict) -> dict:
    """Full miss on worker A, then a shared hit and a local hit on worker B; times, forwards, equality."""
    import redis
    import torch

    from engine.cache.records import cache_key

    redis.Redis.from_url(url).flushall()
    a, b = tiered(root / "a", url), tiered(root / "b", url)
    for cache in (a, b):  # connect first: a worker's connection is open long before a reference arrives
        await cache.shared.fetch(cache_key({"bench": "connect"}))
    out: dict = {}
    for label, cache, expect_hit in (("miss", a, False), ("shared_hit", b, True), ("local_hit", b, True)):
        before = calls["base"]
        shared_hits = cache.shared.hits
        t0 = time.perf_counter()
        vl, hit, parts = await encode_stage(pipe, cache, request.replace(reference=request.reference.copy()),
                                            identities)
        out[label] = time.perf_counter() - t0
        out[f"{label}_parts"] = parts
        out[f"{label}_forwards"] = calls["base"] - before
        out[f"{label}_from_redis"] = cache.shared.hits - shared_hits
        if hit != expect_hit:
            raise RuntimeError(f"{label}: expected hit={expect_hit}, got {hit}")
        out.setdefault("vls", []).append(vl)
    first = out.pop("vls")
    out["equal"] = all(torch.equal(first[0].embeddings, v.embeddings) for v in first[1:])
    if out["shared_hit_from_redis"] != 1 or out["local_hit_from_redis"] != 0:
        raise RuntimeError("the shared hit must come from Redis and the local hit from the local cache")
    out["entry_bytes"] = (await b.local.stats())["bytes"]
    await a.aclose()
    await b.aclose()
    return out


async def run(args) -> int:
    from engine.types import StylizeRequest

    side = args.side or (64 if args.quick else 1024)
    rounds = args.reps or (2 if args.quick else 3)
    machine = C.machine()
    print(f"{NAME}: {'quick' if args.quick else 'full'} mode on {C.describe(machine)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="zvl-bench-shared-") as tmp:
        root = Path(tmp)
        proc, url = start_redis(root)
        try:
            pipe = build_pipeline(root, args.quick)
            identity_s = time_identity(Path(pipe.vl_path))
            model = pipe.vl_extractor.model
            calls = {"base": 0}
            model.model.register_forward_hook(lambda *_: calls.__setitem__("base", calls["base"] + 1))
            request = StylizeRequest(prompt="a lighthouse on a cliff at dusk", reference=C.reference_image(side, 3),
                                     alpha=0.3)
            identities: dict = {}
            pipe.encode_reference(request.replace(reference=C.reference_image(side, seed=4)))  # warm-up, untimed
            rows = []
            for i in range(rounds):
                rows.append(await one_round(pipe, root / f"round{i}", url, request, identities, calls))
                r = rows[-1]
                print(f"  round {i + 1}/{rounds}: miss {r['miss']:.3f}s, shared hit {r['shared_hit'] * 1000:.1f} ms, "
                      f"local hit {r['local_hit'] * 1000:.1f} ms; entry {r['entry_bytes']} bytes", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return report(args, machine, side, rows, identity_s)


def time_identity(folder: Path) -> dict:
    """What the path-free model identity costs once per process (memoised after): seconds, weight files, bytes."""
    from engine.models.identity import model_identity

    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")]
    t0 = time.perf_counter()
    model_identity(folder)
    return {"seconds": round(time.perf_counter() - t0, 4), "weight_files": len(weights),
            "weight_bytes": sum(p.stat().st_size for p in weights)}


def report(args, machine: dict, side: int, rows: list[dict], identity: dict) -> int:
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    miss_over_shared = C.median_ratio(col("miss"), col("shared_hit"))
    shared_over_local = C.median_ratio(col("shared_hit"), col("local_hit"))
    results = {
        "name": NAME, "mode": "quick" if args.quick else "full", "machine": machine, "reference_side": side,
        "rounds": len(rows), "miss": C.stats(col("miss")), "shared_hit": C.stats(col("shared_hit")),
        "local_hit": C.stats(col("local_hit")), "miss_over_shared_hit": round(miss_over_shared, 2),
        "shared_hit_over_local_hit": round(shared_over_local, 3),
        "miss_over_local_hit": round(C.median_ratio(col("miss"), col("local_hit")), 2),
        "vl_forwards": {k: col(f"{k}_forwards") for k in ("miss", "shared_hit", "local_hit")},
        "hits_equal_miss": all(col("equal")), "entry_bytes": rows[-1]["entry_bytes"], "vl_identity": identity,
        "parts_s": {k: {p: round(C.median([r[f"{k}_parts"][p] for r in rows]), 5) for p in rows[0][f"{k}_parts"]}
                    for k in ("miss", "shared_hit", "local_hit")},
    }
    print(f"full miss: {results['miss']['median_s']:.3f}s median; shared hit (local miss, Redis hit): "
          f"{results['shared_hit']['median_s'] * 1000:.1f} ms; local hit: {results['local_hit']['median_s'] * 1000:.1f}"
          f" ms; hits equal miss: {results['hits_equal_miss']}")
    print(f"shared hit / local hit: {shared_over_local:.2f}x; full miss / local hit: {results['miss_over_local_hit']}x")
    print(f"Qwen3-VL folder identity: {identity['seconds'] * 1000:.1f} ms for {identity['weight_files']} weight "
          f"file(s), {identity['weight_bytes'] / 1e6:.0f} MB (page cache warm: the folder was just written)")
    print(f"vl forwards on shared hit: {max(results['vl_forwards']['shared_hit'])}")
    print(f"vl forwards on local hit: {max(results['vl_forwards']['local_hit'])}")
    C.finish(C.figure(NAME, f"speed-up (full miss / shared hit, median of {len(rows)})", miss_over_shared, digits=1),
             results, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=None, help="reference side in px (default 1024; quick 64)")
    args = C.parse(p, argv)
    C.quiet()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
