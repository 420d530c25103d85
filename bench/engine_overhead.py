"""Engine overhead: the project's generation stage on precomputed embeddings vs the raw diffusers call.

    python bench/engine_overhead.py [--quick] [--reps N] [--size PX] [--steps N] [--json PATH] [--threads N]

What is compared, on the same model, the same final caption and the same seed:

* **engine**: ``StylePipeline.generate(request, vl, text_emb)`` — what ``StylePipeline.__call__`` and the worker's DiT stage
  run once the embeddings exist: ``check_inputs`` → blend → fit → ``Generator.denoise`` (checks, per-image CPU
  generators, shift pinned, step callback) → ``Generator.decode`` → the result record and statistics. The
  reference's Qwen3-VL extraction and the prompt's Qwen3 embedding are computed once beforehand (they are stage 1
  and are not what this measures).
* **raw**: ``ZImagePipeline(prompt_embeds=[caption], ..., generator=torch.Generator("cpu").manual_seed(seed))``
  with ``output_type="pil"``, built by ``ZImagePipeline.from_pretrained`` on the same folder (sharing the loaded
  transformer and VAE, its own scheduler from the folder), where ``caption`` is the engine's own blended and fitted
  caption. No checks, no callback, decode inside the pipeline.

The model is random and built like ``engine.models.tiny`` but large enough that denoising dominates, as at full size
(full mode: a DiT of width 256, 4 layers at 256x256 px, 9 steps; the VAE decode is ~13% of a run, 6% at full size),
saved in the real folder layout to a temporary folder and loaded through ``StylePipeline.from_pretrained``, with the
engine's automatic dtype (bf16 on a CPU with native bf16, else float32). Runs are interleaved (ABBA) after one
warm-up each; the figure is the median of the per-round ratios engine/raw (the ratios of the medians and of
the minimums are printed too: on a machine shared with other work they bracket the noise). The images of both paths
are compared pixel for pixel. ``--quick`` uses ``engine.models.tiny`` at 32 px, 2 steps (seconds; what the test runs).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "engine_overhead"

#: Full mode: a DiT big enough that denoising dominates (bf16 on the 2-core dev VM: 0.4 s a run with 2 threads,
#: 0.8 s with 1).
FULL = dict(dim=256, n_layers=4, n_refiner_layers=1, n_heads=4, cap_dim=256, vae_channels=(16, 16, 32, 32),
            text_layers=2)
FULL_VL = dict(hidden=256, layers=8, heads=8, kv_heads=4, head_dim=32, vision_depth=2, vision_hidden=64,
               vision_heads=2)


def build_models(root: Path, quick: bool) -> dict[str, Path]:
    if quick:
        from engine.models.tiny import make_tiny

        return make_tiny(root)
    return {"zimage": C.build_zimage_folder(root / "zimage", **FULL),
            "qwen3vl": C.build_vl_folder(root / "qwen3vl", **FULL_VL)}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="image side in px (default 256; quick 32)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 9; quick 2)")
    p.add_argument("--seed", type=int, default=7)
    args = C.parse(p, argv)
    C.quiet()
    import numpy as np
    import torch
    from diffusers import ZImagePipeline

    from engine.generation.pipeline import StylePipeline
    from engine.types import StylizeRequest

    size = args.size or (32 if args.quick else 256)
    steps = args.steps or (2 if args.quick else 9)
    rounds = args.reps or (3 if args.quick else 15)
    machine = C.machine()
    print(f"{NAME}: {'quick' if args.quick else 'full'} mode on {C.describe(machine)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="zvl-bench-overhead-") as tmp:
        t0 = time.perf_counter()
        paths = build_models(Path(tmp), args.quick)
        build_s = time.perf_counter() - t0
        pipe = StylePipeline.from_pretrained(paths["zimage"], paths["qwen3vl"], device="cpu", vl_device="cpu",
                                             text_device="cpu", dtype="auto")
        request = StylizeRequest(prompt="a watercolor fox in the snow, soft light, muted palette",
                                 reference=C.reference_image(128 if args.quick else 256, seed=1), alpha=0.3,
                                 seeds=(args.seed,), steps=steps, width=size, height=size)
        pipe.check_inputs(request)
        text = pipe.encode_prompt(request)  # stage 1, once: not timed
        vl = pipe.encode_reference(request)
        caption = pipe.fit(request, pipe.blend(request, text, vl))

        gen = pipe.generator
        gen.load()
        transformer, vae = gen.pipe.transformer, gen.pipe.vae
        dtype = transformer.dtype
        raw = ZImagePipeline.from_pretrained(str(paths["zimage"]), transformer=transformer, vae=vae,
                                             text_encoder=None, tokenizer=None, local_files_only=True)
        raw.set_progress_bar_config(disable=True)
        raw_caption = caption.to(dtype)
        params = sum(p.numel() for p in transformer.parameters())
        print(f"model: DiT {params / 1e6:.1f} M params (dim {transformer.config.dim}, {transformer.config.n_layers} "
              f"layers), {dtype}, {size}x{size}, {steps} steps, caption {tuple(caption.shape)}, "
              f"built in {build_s:.1f}s", flush=True)

        outputs: dict[str, list] = {"engine": [], "raw": []}
        timings: list[dict[str, float]] = []

        def run_engine():
            res = pipe.generate(request, vl, text)
            outputs["engine"].append(res.images[0])
            timings.append(res.timings)

        def run_raw():
            g = torch.Generator("cpu").manual_seed(args.seed)
            img = raw(prompt_embeds=[raw_caption], height=size, width=size, num_inference_steps=steps,
                      guidance_scale=0.0, generator=g, output_type="pil").images[0]
            outputs["raw"].append(img)

        cpu: dict[str, list[float]] = {}
        times = C.interleaved({"engine": run_engine, "raw": run_raw}, rounds, warmup=1, cpu=cpu)
        a = np.asarray(outputs["engine"][0], dtype=np.int16)
        b = np.asarray(outputs["raw"][0], dtype=np.int16)
        identical = a.shape == b.shape and bool((a == b).all())
        max_diff = int(np.abs(a - b).max()) if a.shape == b.shape else -1
        stable = all(np.array_equal(np.asarray(x), np.asarray(outputs["engine"][0])) for x in outputs["engine"])

    ratio = C.median_ratio(times["engine"], times["raw"])
    stage = {k: round(C.median([t[k] for t in timings[1:] or timings]), 4) for k in ("blend", "denoise", "decode")}
    results = {
        "name": NAME, "mode": "quick" if args.quick else "full", "machine": machine,
        "model": {"dit_params": params, "dim": int(transformer.config.dim),
                  "n_layers": int(transformer.config.n_layers), "dtype": str(dtype).replace("torch.", ""),
                  "size": size, "steps": steps, "caption_rows": int(caption.shape[0])},
        "rounds": rounds, "engine": C.stats(times["engine"]), "raw": C.stats(times["raw"]),
        "ratio_median_of_rounds": round(ratio, 4),
        "ratio_of_medians": round(C.ratio_of_medians(times["engine"], times["raw"]), 4),
        "ratio_of_mins": round(C.ratio_of_mins(times["engine"], times["raw"]), 4),
        "cpu_time_ratio_median_of_rounds": round(C.median_ratio(cpu["engine"], cpu["raw"]), 4),
        "engine_cpu": C.stats(cpu["engine"]), "raw_cpu": C.stats(cpu["raw"]),
        "loadavg_1m_at_end": round(__import__("os").getloadavg()[0], 2),
        "engine_stage_medians_s": stage, "identical_images": identical, "max_pixel_diff": max_diff,
        "engine_repeatable": stable, "target": "<= 1.03",
    }
    print(f"engine median {results['engine']['median_s']:.3f}s (blend {stage['blend']:.4f}s, denoise "
          f"{stage['denoise']:.3f}s, decode {stage['decode']:.3f}s), raw median {results['raw']['median_s']:.3f}s, "
          f"ratio of medians {results['ratio_of_medians']:.3f}, of minimums {results['ratio_of_mins']:.3f}; "
          f"process CPU-time ratio {results['cpu_time_ratio_median_of_rounds']:.3f} (target <= 1.03)")
    print(f"identical images (engine vs raw, seed {args.seed}): {identical} (max pixel difference {max_diff}); "
          f"engine repeatable across runs: {stable}")
    C.finish(C.figure(NAME, f"ratio (engine/raw, median of {rounds} interleaved)", ratio), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
