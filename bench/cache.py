"""Embedding cache: a first request with a reference (Qwen3-VL extraction) vs the same reference again (cache hit).

    python bench/cache.py [--quick] [--reps N] [--side PX] [--json PATH] [--threads N]

Both requests go through the steps the worker's encode stage takes (``EngineWorker._encode``), in its order:
``pipeline_vl_key(pipe, request, identities)`` (the worker's default key: ``engine.cache.store.vl_cache_record`` of the
reference's pixels, every VL setting, the image-token budget, the model folder's identity, the dtype; the folder
hash memoised as the worker memoises it), ``EmbeddingCache.get_vl(key)``, and on a miss
``StylePipeline.encode_reference(request)`` in a thread followed by ``EmbeddingCache.put_vl(key, vl)``. The cache is
the real ``EmbeddingCache`` (atomic checksummed safetensors files in a temporary folder) over a ``MemoryCacheIndex``
(the bot uses ``SqliteCacheIndex`` behind the same protocol). The repeated request carries a *copy* of the reference
image (same pixels, another object), as a re-upload would.

Forward hooks count calls of the Qwen3-VL base model and of its vision tower: the hit must make none
(``vl forwards on hit: 0``), and its embeddings must equal the miss's. Each round starts from an empty cache; one
untimed extraction of another image warms the model up first (model loading is reported separately). The model is
the random real-depth Qwen3-VL of ``vl_layer_stop.py`` (36 layers, ~1/8 widths) with a 1024x1024 reference (1024 image
tokens, the engine's default budget); ``--quick`` uses ``engine.models.tiny`` and a 64 px reference.

A new prompt with a known reference (issue 14): for ``tokens=image`` / ``image_no_markers`` and for ``append`` the
extraction reads only image rows, which precede the prompt in the causal sequence, so it is made from the image alone
and its key has no prompt. Each round also sends such a request, then the same reference with *another prompt*: the
second must hit (``vl forwards on new prompt: 0``); with ``tokens=full`` the new prompt still misses (its rows
depend on the prompt), which the round reports as the contrast.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from vl_layer_stop import FULL_VL  # noqa: E402

NAME = "cache"


async def encode_stage(pipe, cache, request, identities: dict) -> tuple[object, bool, dict[str, float]]:
    """The worker's per-reference encode step: key, cache lookup, extraction + store on a miss."""
    from engine.cache.keys import pipeline_vl_key

    t = {}
    t0 = time.perf_counter()
    key = await asyncio.to_thread(pipeline_vl_key, pipe, request, identities)
    t["key"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vl = await cache.get_vl(key)
    t["get"] = time.perf_counter() - t0
    if vl is not None:
        return vl, True, t
    t0 = time.perf_counter()
    vl = await asyncio.to_thread(pipe.encode_reference, request)
    t["extract"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await cache.put_vl(key, vl)
    t["put"] = time.perf_counter() - t0
    return vl, False, t


async def new_prompt_round(pipe, cache, request, identities: dict, calls: dict) -> dict[str, int]:
    """A request, then the same reference (a copy) with another prompt: VL forwards of the second, per setting."""
    forwards = {}
    for label, changes in (("tokens=image", {"tokens": "image"}), ("append", {"blend_mode": "append"}),
                           ("tokens=full", {})):
        first = request.replace(**changes)
        await encode_stage(pipe, cache, first, identities)
        before = calls["base"]  # Qwen3-VL base-model forwards (the vision tower runs inside each)
        second = first.replace(prompt="a quiet harbour at night, oil painting", reference=request.reference.copy())
        _vl, hit, _t = await encode_stage(pipe, cache, second, identities)
        forwards[label] = calls["base"] - before
        if hit != (label != "tokens=full"):
            raise RuntimeError(f"{label}: expected {'a hit' if label != 'tokens=full' else 'a miss'} for a new prompt")
    return forwards


async def run(args) -> int:
    import torch

    from engine.cache.store import EmbeddingCache, MemoryCacheIndex
    from engine.generation.pipeline import StylePipeline
    from engine.types import StylizeRequest

    side = args.side or (64 if args.quick else 1024)
    rounds = args.reps or 3
    machine = C.machine()
    print(f"{NAME}: {'quick' if args.quick else 'full'} mode on {C.describe(machine)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="zvl-bench-cache-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        if args.quick:
            from engine.models.tiny import make_tiny

            paths = make_tiny(root / "models")
        else:
            paths = {"zimage": C.build_zimage_folder(root / "models" / "zimage", cap_dim=FULL_VL["hidden"]),
                     "qwen3vl": C.build_vl_folder(root / "models" / "qwen3vl", **FULL_VL)}
        build_s = time.perf_counter() - t0
        pipe = StylePipeline.from_pretrained(paths["zimage"], paths["qwen3vl"], device="cpu", vl_device="cpu",
                                             text_device="cpu", dtype="auto", vl_max_image_tokens=1024)
        t0 = time.perf_counter()
        pipe.load("vl")
        load_s = time.perf_counter() - t0
        model = pipe.vl_extractor.model
        calls = {"base": 0, "vision": 0}
        model.model.register_forward_hook(lambda *_: calls.__setitem__("base", calls["base"] + 1))
        model.model.visual.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1))

        reference = C.reference_image(side, seed=3)
        request = StylizeRequest(prompt="a lighthouse on a cliff at dusk", reference=reference, alpha=0.3)
        repeat = request.replace(reference=reference.copy())
        identities: dict = {}  # the worker's memo of model-folder hashes (computed once per process)
        warm = request.replace(reference=C.reference_image(side, seed=4))
        from engine.cache.keys import pipeline_vl_key

        pipeline_vl_key(pipe, warm, identities)
        pipe.encode_reference(warm)  # warm-up, untimed
        print(f"model: Qwen3-VL {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
              f"{len(model.model.language_model.layers)} decoder layers, {pipe.vl_extractor.dtype}; reference "
              f"{side}x{side}; built in {build_s:.1f}s, loaded in {load_s:.2f}s", flush=True)

        miss_s, hit_s, hit_parts, miss_parts, hit_calls, equal = [], [], [], [], [], []
        miss_calls, free_forwards = [], []
        for i in range(rounds):
            cache = EmbeddingCache(root / f"cache{i}", MemoryCacheIndex(), 2 << 30)
            await cache.recover()
            before = dict(calls)
            t0 = time.perf_counter()
            first, hit1, parts1 = await encode_stage(pipe, cache, request, identities)
            miss_s.append(time.perf_counter() - t0)
            miss_calls.append(calls["base"] - before["base"])
            before = dict(calls)
            t0 = time.perf_counter()
            second, hit2, parts2 = await encode_stage(pipe, cache, repeat, identities)
            hit_s.append(time.perf_counter() - t0)
            hit_calls.append((calls["base"] - before["base"]) + (calls["vision"] - before["vision"]))
            if hit1 or not hit2:
                raise RuntimeError(f"expected a miss then a hit; got hit={hit1} then hit={hit2}")
            equal.append(torch.equal(first.embeddings, second.embeddings) and first.metadata() == second.metadata())
            miss_parts.append(parts1)
            hit_parts.append(parts2)
            free_forwards.append(await new_prompt_round(pipe, cache, request, identities, calls))
            stats = await cache.stats()
            print(f"  round {i + 1}/{rounds}: miss {miss_s[-1]:.3f}s (extract {parts1['extract']:.3f}s), hit "
                  f"{hit_s[-1] * 1000:.1f} ms; cache {stats['entries']} entry, {stats['bytes']} bytes", flush=True)

    speedup = C.median([m / h for m, h in zip(miss_s, hit_s)])
    part = lambda rows, k: round(C.median([r[k] for r in rows]), 5)  # noqa: E731
    results = {
        "name": NAME, "mode": "quick" if args.quick else "full", "machine": machine, "reference_side": side,
        "image_tokens": int(first.settings["image_tokens"]), "rounds": rounds, "model_load_s": round(load_s, 3),
        "miss": C.stats(miss_s), "hit": C.stats(hit_s),
        "miss_parts_s": {k: part(miss_parts, k) for k in ("key", "get", "extract", "put")},
        "hit_parts_s": {k: part(hit_parts, k) for k in ("key", "get")},
        "vl_forwards_on_miss": miss_calls, "vl_forwards_on_hit": hit_calls, "hit_equals_miss": all(equal),
        "speedup_median_of_rounds": round(speedup, 2), "entry_bytes": stats["bytes"],
        "new_prompt_vl_forwards": {k: [f[k] for f in free_forwards] for k in free_forwards[0]},
    }
    print(f"first request (miss, VL extraction): {results['miss']['median_s']:.3f}s median "
          f"(key {results['miss_parts_s']['key'] * 1000:.1f} ms, extract {results['miss_parts_s']['extract']:.3f}s, "
          f"put {results['miss_parts_s']['put'] * 1000:.1f} ms)")
    print(f"repeated request (hit): {results['hit']['median_s'] * 1000:.1f} ms median (key "
          f"{results['hit_parts_s']['key'] * 1000:.1f} ms, get {results['hit_parts_s']['get'] * 1000:.1f} ms); "
          f"hit equals miss: {all(equal)}")
    print(f"vl forwards on miss: {max(miss_calls)}")
    print(f"vl forwards on hit: {max(hit_calls)}")
    for mode, counts in results["new_prompt_vl_forwards"].items():
        print(f"vl forwards on new prompt, known reference ({mode}): {max(counts)}")
    free = [max(c) for m, c in results["new_prompt_vl_forwards"].items() if m != "tokens=full"]
    print(f"vl forwards on new prompt: {max(free)}")
    C.finish(C.figure(NAME, f"speed-up (miss/hit time, median of {rounds})", speedup, digits=1), results, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=None, help="reference side in px (default 1024; quick 64)")
    args = C.parse(p, argv)
    C.quiet()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
