"""VL layer stop: the engine's Qwen3-VL extraction stopped at layer -6 vs a full forward with all hidden states.

    python bench/vl_layer_stop.py [--quick] [--reps N] [--side PX] [--layer -6] [--json PATH] [--threads N]

* **stop** (the engine): ``VLExtractor.extract(image, text, hidden_layer=-6, normalization="none")`` — the processor,
  then the base model (vision tower + language model, no LM head) with the decoder's layer list cut after the layer
  whose output ``-6`` is (``engine.conditioning.text.forward_to_layers``), then token bookkeeping.
* **full** (what the seed did): the same processor inputs (``VLExtractor.build_inputs``), then
  ``model(**inputs, use_cache=False, output_hidden_states=True)`` on ``Qwen3VLForConditionalGeneration`` — every
  decoder layer, the final norm, the LM head over every position — and ``hidden_states[-6]``.

Decoder layers executed are counted with forward hooks on each layer module (``31 of 36`` at -6 for the real depth),
and the two results are compared value for value. The model is random with the real depth of Qwen3-VL-4B (36 decoder
layers, a 24-block vision tower with deepstack taps at 5/11/17) and about an eighth of its widths (text 320 wide,
vision 128 wide: the real 2.5:1 ratio), so it runs on a CPU in seconds; the reference is 512x512 (256 image tokens,
``--side`` to change). Time ratios depend on how the vision tower and the decoder share the work, which differs with
the widths and the reference size (on the real model at 1024² on a 16-core Xeon the stop saved 4%: the vision
tower's attention over 4096 patches dominates); the layer count does not. ``--quick`` uses ``engine.models.tiny`` (8 layers,
so -6 runs 3 of 8) with a 64 px reference.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "vl_layer_stop"

#: Real depth (36 decoder layers, 24 vision blocks), about 1/8 of Qwen3-VL-4B's widths.
FULL_VL = dict(hidden=320, layers=36, heads=4, kv_heads=2, head_dim=80, intermediate=1216, vision_depth=24,
               vision_hidden=128, vision_heads=2, vision_intermediate=512, deepstack=(5, 11, 17))


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=None, help="reference side in px (default 512; quick 64)")
    p.add_argument("--layer", type=int, default=-6, help="hidden layer the engine stops at (default -6)")
    args = C.parse(p, argv)
    C.quiet()
    import torch

    from engine.types import Normalization
    from engine.conditioning.vision import VLExtractor

    side = args.side or (64 if args.quick else 512)
    rounds = args.reps or (3 if args.quick else 15)
    machine = C.machine()
    print(f"{NAME}: {'quick' if args.quick else 'full'} mode on {C.describe(machine)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="zvl-bench-vlstop-") as tmp:
        t0 = time.perf_counter()
        if args.quick:
            from engine.models.tiny import make_tiny

            folder = make_tiny(Path(tmp))["qwen3vl"]
        else:
            folder = C.build_vl_folder(Path(tmp) / "qwen3vl", **FULL_VL)
        build_s = time.perf_counter() - t0
        ex = VLExtractor.from_pretrained(folder, device="cpu", dtype="auto", max_image_tokens=4096)
        model = ex.model
        layers = list(model.model.language_model.layers)
        total = len(layers)
        counter = {"n": 0}
        for layer in layers:
            layer.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
        vision_t = {"t0": 0.0, "s": 0.0}
        model.model.visual.register_forward_pre_hook(lambda *_: vision_t.__setitem__("t0", time.perf_counter()))
        model.model.visual.register_forward_hook(
            lambda *_: vision_t.__setitem__("s", time.perf_counter() - vision_t["t0"]))
        vision_share: list[float] = []
        image = C.reference_image(side, seed=2)
        text = "describe the style of this image"
        params = sum(p.numel() for p in model.parameters())
        print(f"model: Qwen3-VL {params / 1e6:.1f} M params, {total} decoder layers, {ex.dtype}, reference "
              f"{side}x{side}, built in {build_s:.1f}s", flush=True)

        counts: dict[str, int] = {}
        outputs: dict[str, torch.Tensor] = {}

        def run_stop():
            counter["n"] = 0
            t0 = time.perf_counter()
            res = ex.extract(image, text, hidden_layer=args.layer, normalization=Normalization.NONE)
            vision_share.append(vision_t["s"] / (time.perf_counter() - t0))
            counts["stop"] = counter["n"]
            outputs["stop"] = res.embeddings
            outputs["tokens"] = res.settings["image_tokens"]

        def run_full():
            counter["n"] = 0
            inputs, _ = ex.build_inputs(image, text)
            with torch.no_grad():
                out = model(**inputs, use_cache=False, output_hidden_states=True)
            counts["full"] = counter["n"]
            outputs["full"] = out.hidden_states[args.layer][0].to(torch.float32)

        cpu: dict[str, list[float]] = {}
        times = C.interleaved({"stop": run_stop, "full": run_full}, rounds, warmup=1, cpu=cpu)
        same = outputs["stop"].shape == outputs["full"].shape
        identical = same and bool(torch.equal(outputs["stop"], outputs["full"]))
        max_diff = float((outputs["stop"] - outputs["full"]).abs().max()) if same else float("nan")

    ratio = C.median_ratio(times["stop"], times["full"])
    expected = total + args.layer + 1
    results = {
        "name": NAME, "mode": "quick" if args.quick else "full", "machine": machine,
        "model": {"params": params, "decoder_layers": total, "dtype": str(ex.dtype).replace("torch.", ""),
                  "reference_side": side, "image_tokens": outputs["tokens"], "config": None if args.quick else FULL_VL},
        "layer": args.layer, "rounds": rounds, "stop": C.stats(times["stop"]), "full": C.stats(times["full"]),
        "layers_run_stop": counts["stop"], "layers_run_full": counts["full"], "layers_expected_stop": expected,
        "ratio_median_of_rounds": round(ratio, 4),
        "ratio_of_medians": round(C.ratio_of_medians(times["stop"], times["full"]), 4),
        "ratio_of_mins": round(C.ratio_of_mins(times["stop"], times["full"]), 4),
        "cpu_time_ratio_median_of_rounds": round(C.median_ratio(cpu["stop"], cpu["full"]), 4),
        "stop_cpu": C.stats(cpu["stop"]), "full_cpu": C.stats(cpu["full"]),
        "identical_hidden_states": identical, "max_abs_diff": max_diff,
        "vision_tower_share_of_stop": round(C.median(vision_share), 3),
    }
    print(f"decoder layers executed: {counts['stop']} of {total} at layer {args.layer} (expected {expected}; "
          f"full forward: {counts['full']} of {total} + LM head)")
    print(f"stop median {results['stop']['median_s']:.3f}s, full median {results['full']['median_s']:.3f}s "
          f"(ratio of medians {results['ratio_of_medians']:.3f}, of minimums {results['ratio_of_mins']:.3f}, process "
          f"CPU-time ratio {results['cpu_time_ratio_median_of_rounds']:.3f}); "
          f"{outputs['tokens']} image tokens; the vision tower is {100 * C.median(vision_share):.0f}% of the stopped "
          f"extraction")
    print(f"hidden states identical to full_forward.hidden_states[{args.layer}]: {identical} "
          f"(max abs diff {max_diff:g})")
    C.finish(C.figure(NAME, f"time ratio (stop at {args.layer}/full forward with all hidden states, median of "
                            f"{rounds} interleaved)", ratio), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
