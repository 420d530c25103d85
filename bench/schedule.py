"""What issue 16's two research settings cost: a scheduled caption per step, and attention-chosen append rows.

    python bench/schedule.py [--quick] [--reps N] [--json PATH]

* **per-step caption** (``style_schedule``, :mod:`engine.generation.stepped`): one blend at a new α of a 1024-image-row
  VL sequence (1045 rows) into a 30-row prompt at the real width 2560: ``pool``, ``append`` with 2-D pooling and with
  attention rows (K = 64 at α = 1), each timed alone (median of ``--reps``). A ramp pays one per step; early/late
  two per run. Quick mode: width 64.
* **attention probe** (``append_selection=attention``, :mod:`engine.conditioning.attention`): one reference
  extraction at the default 1024-token budget with and without the probe, on the random Qwen3-VL at the real depth
  and 1/8 of the widths (``bench/scoring.py``'s model; quick: the tiny one), interleaved.

The figure is the extraction's time with the probe over without it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from scoring import EIGHTH_VL  # noqa: E402

NAME = "schedule"


def _captions(width: int, reps: int) -> dict[str, list[float]]:
    import torch

    from engine.conditioning.blend import blend

    g = torch.Generator().manual_seed(0)
    text, vl = torch.randn(30, width, generator=g), torch.randn(1045, width, generator=g)
    mask = torch.zeros(1045, dtype=torch.bool)
    mask[20:1044] = True
    mass = torch.rand(1024, generator=g)
    common = dict(image_mask=mask, append_tokens=64, image_grid=(32, 32), row_scale=1.0)
    runs = {"pool": lambda: blend(vl, text, 0.6, "pool", row_scale=1.0),
            "append_pool": lambda: blend(vl, text, 1.0, "append", **common),
            "append_attention": lambda: blend(vl, text, 1.0, "append", row_weights=mass, **common)}
    return C.interleaved(runs, reps, warmup=1, log=None)


def main(argv: list[str] | None = None) -> int:
    args = C.parse(C.parser(__doc__.split("\n\n")[0]), argv)
    C.quiet()
    from engine.conditioning.vision import VLExtractor

    reps = args.reps or (3 if args.quick else 7)
    machine = C.machine()
    print(f"{NAME}: {'quick' if args.quick else 'full'} mode on {C.describe(machine)}", flush=True)
    width = 64 if args.quick else 2560
    blends = _captions(width, reps)
    print(f"per-step caption at width {width}, median of {reps}: "
          + ", ".join(f"{k} {1000 * C.median(v):.2f} ms" for k, v in blends.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="zvl-bench-schedule-") as tmp:
        if args.quick:
            from engine.models.tiny import make_tiny

            folder = make_tiny(Path(tmp))["qwen3vl"]
        else:
            folder = C.build_vl_folder(Path(tmp) / "qwen3vl", **EIGHTH_VL)
        ex = VLExtractor.from_pretrained(folder, device="cpu", dtype="auto")
        reference, prompt = C.reference_image(1024, seed=2), "a lighthouse on a cliff at dusk, oil painting"
        runs = {"plain": lambda: ex.extract(reference, prompt, hidden_layer=-6),
                "attention": lambda: ex.extract(reference, prompt, hidden_layer=-6, attention=True)}
        times = C.interleaved(runs, reps, warmup=1)
        rows = int(ex.extract(reference, prompt, hidden_layer=-6, attention=True).attention.shape[0])
    ratio = C.ratio_of_medians(times["attention"], times["plain"])
    print(f"extraction, median of {reps}: plain {1000 * C.median(times['plain']):.1f} ms, with the attention probe "
          f"{1000 * C.median(times['attention']):.1f} ms ({rows} image rows ranked)")
    results = {"name": NAME, "mode": "quick" if args.quick else "full", "machine": machine, "reps": reps,
               "caption_width": width, "per_step_caption": {k: C.stats(v) for k, v in blends.items()},
               "extraction": {k: C.stats(v) for k, v in times.items()}, "image_rows": rows,
               "attention_over_plain": round(ratio, 4)}
    C.finish(C.figure(NAME, f"extraction with / without the attention probe (median of {reps})", ratio, digits=3),
             results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
