"""Scoring cost: what scoring one sweep cell takes, weight-free scores and the Qwen3-VL judge's two questions.

    python bench/scoring.py [--quick] [--reps N] [--side PX] [--device cpu|cuda] [--real-size] [--json PATH]

* **weight-free** (:mod:`engine.scoring.metrics`): ``color_distance``, ``texture_distance``, ``clipped_share`` and
  ``noise_sigma`` of a ``--side``² image (default 1024, the output size; quick 128) against a 768² reference, each
  timed alone (median of ``--reps``).
* **judge** (:class:`engine.scoring.judge.Judge`): ``prompt_adherence`` (one image) and ``style_similarity`` (two
  images), each one forward pass of ``Qwen3VLForConditionalGeneration`` with the LM head at the last position only,
  images capped at 256 image tokens. Model: random Qwen3-VL at the real depth and 1/8 of the widths (as
  ``bench/vl_layer_stop.py``), ``--real-size`` the real Qwen3-VL-4B shapes (36 layers, 2560 wide, vision 1024 x 24:
  for a GPU), ``--quick`` the tiny test model.
* **extraction** for scale: one ``VLExtractor.extract`` of the reference at the default 1024-token budget with the
  same model, which every VL sweep pays once.

The figure is the scoring cost of one cell (weight-free + both questions), in seconds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "scoring"

#: Real depth, about 1/8 of Qwen3-VL-4B's widths (bench/vl_layer_stop.py's model).
EIGHTH_VL = dict(hidden=320, layers=36, heads=4, kv_heads=2, head_dim=80, intermediate=1216, vision_depth=24,
                 vision_hidden=128, vision_heads=2, vision_intermediate=512, deepstack=(5, 11, 17))
#: Qwen3-VL-4B-Instruct's shapes (config.json of the hub model).
REAL_VL = dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vision_depth=24,
               vision_hidden=1024, vision_heads=16, vision_intermediate=4096, deepstack=(5, 11, 17))


def _weight_free(image, reference, reps: int) -> dict[str, dict]:
    from engine.scoring import metrics

    runs = {"color_distance": lambda: metrics.color_distance(image, reference),
            "texture_distance": lambda: metrics.texture_distance(image, reference),
            "clipped_share": lambda: metrics.clipped_share(image),
            "noise_sigma": lambda: metrics.noise_sigma(image)}
    return C.interleaved(runs, reps, warmup=1)


def _vl_folder(tmp: str, quick: bool, real_size: bool) -> tuple[Path, dict | None]:
    if quick:
        from engine.models.tiny import make_tiny

        return make_tiny(Path(tmp))["qwen3vl"], None
    config = REAL_VL if real_size else EIGHTH_VL
    return C.build_vl_folder(Path(tmp) / "qwen3vl", **config), config


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=None, help="scored image side in px (default 1024; quick 128)")
    p.add_argument("--device", default="cpu", help="where the judge runs (cpu | cuda)")
    p.add_argument("--real-size", action="store_true", help="the real Qwen3-VL-4B shapes (random weights)")
    args = C.parse(p, argv)
    C.quiet()
    from engine.conditioning.vision import VLExtractor
    from engine.scoring.judge import Judge

    side = args.side or (128 if args.quick else 1024)
    reps = args.reps or (3 if args.quick else 7)
    machine = C.machine()
    print(f"{NAME}: {'quick' if args.quick else 'full'} mode on {C.describe(machine)}", flush=True)
    image, reference = C.reference_image(side, seed=1), C.reference_image(max(64, side * 3 // 4), seed=2)
    free = _weight_free(image, reference, reps)
    free_total = sum(C.median(v) for v in free.values())
    print("weight-free, median of %d: " % reps + ", ".join(f"{k} {1000 * C.median(v):.1f} ms" for k, v in free.items())
          + f" (sum {1000 * free_total:.1f} ms, {side}x{side} against {reference.width}x{reference.height})")

    with tempfile.TemporaryDirectory(prefix="zvl-bench-scoring-") as tmp:
        t0 = time.perf_counter()
        folder, config = _vl_folder(tmp, args.quick, args.real_size)
        build_s = time.perf_counter() - t0
        ex = VLExtractor.from_pretrained(folder, device=args.device, dtype="auto")
        judge = Judge.from_extractor(ex)
        params = sum(q.numel() for q in ex.model.parameters())
        print(f"judge model: Qwen3-VL {params / 1e6:.0f} M params on {ex.device} ({ex.dtype}), built in "
              f"{build_s:.1f} s; images capped at {judge.max_image_tokens} tokens", flush=True)
        device = ex.device if ex.device.type == "cuda" else None
        prompt = "a lighthouse on a cliff at dusk, oil painting"
        runs = {"prompt_adherence": lambda: judge.prompt_adherence(image, prompt),
                "style_similarity": lambda: judge.style_similarity(image, reference),
                "extraction": lambda: ex.extract(reference, prompt, hidden_layer=-6)}
        times = C.interleaved(runs, reps, warmup=1, device=device)
        answer = judge.ask("Does this image show: a lighthouse? Answer Yes or No.", [image])
    judged = C.median(times["prompt_adherence"]) + C.median(times["style_similarity"])
    per_cell = free_total + judged
    results = {"name": NAME, "mode": "quick" if args.quick else "full", "machine": machine, "side": side,
               "reps": reps, "weight_free": {k: C.stats(v) for k, v in free.items()},
               "weight_free_sum_s": round(free_total, 5),
               "judge": {k: C.stats(times[k]) for k in ("prompt_adherence", "style_similarity")},
               "extraction": C.stats(times["extraction"]), "judge_sum_s": round(judged, 5),
               "per_cell_s": round(per_cell, 5), "model": {"params": params, "config": config,
                                                           "device": str(ex.device), "dtype": str(ex.dtype)},
               "p_yes_plus_p_no": round(answer.p_yes + answer.p_no, 6)}
    print(f"judge, median of {reps}: prompt_adherence {1000 * C.median(times['prompt_adherence']):.1f} ms, "
          f"style_similarity {1000 * C.median(times['style_similarity']):.1f} ms; one reference extraction "
          f"{1000 * C.median(times['extraction']):.1f} ms")
    print(f"P(yes)+P(no) <= 1: {answer.p_yes + answer.p_no <= 1.0}")
    C.finish(C.figure(NAME, f"seconds per scored cell (weight-free {side}px + 2 judge questions, median of {reps})",
                      per_cell, digits=4), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
