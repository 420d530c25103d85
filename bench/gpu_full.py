"""Full-size GPU benchmark of the project's own engine with random weights at the published model configs.

    python bench/gpu_full.py [OUT_DIR]          # on a CUDA machine; writes OUT_DIR/gpu_full.json after every section
    TINY=1 python bench/gpu_full.py OUT_DIR     # CPU smoke test with tiny shapes (seconds); also: --quick

Models, built directly on the target device in bf16 (nothing is saved; weights random, images noise, timings
real): the Z-Image DiT at Z-Image-Turbo's config (``ZImageTransformer2DModel(axes_lens=[1536, 512, 512])``, 6.15 B
parameters), a Flux-style 16-channel VAE, Qwen3-4B as the text encoder and Qwen3-VL-4B, both at their published
configs (the tokenizer is ``engine.models.tiny``'s: ids stay in range, token counts differ from the real tokenizer's). They
are wrapped in the engine's own classes (``Generator``, ``TextEncoder``, ``VLExtractor`` accept prebuilt modules) and
placed into a ``StylePipeline`` whose model folders hold only the config files the pipeline reads.

Sections, in order (each in try/except; errors are recorded as ``<section>_error`` and the script goes on):

1. ``env`` — machine, GPU, versions.
2. ``build_dit`` — DiT + VAE on the GPU, wrapped in ``Generator``.
3. ``engine_vs_raw`` — ``StylePipeline.generate`` (the worker's stage 2) vs the raw ``ZImagePipeline`` call on the
   same 512-row caption, 1024², 9 steps, same seed, interleaved; identical-image check; peak VRAM (DiT + VAE only,
   no encoder on the GPU). Target: engine/raw <= 1.03.
4. ``vl_gpu`` — Qwen3-VL-4B built on the GPU, ``VLExtractor.extract`` of a 1024² reference (1024 image tokens,
   stopped at layer -6); extra peak VRAM over the resident DiT. The model then moves to the CPU.
5. ``vl_cpu`` — the same extraction on the CPU in bf16 with all cores.
6. ``captions`` — generation with a text-only caption (32 rows), the default ``pool`` blend (32 rows) and a full VL
   caption (``append`` with 1024 pooled image rows: 1056 rows), interleaved.
7. ``stylize_cpu_encoders`` — one whole ``StylePipeline.__call__`` with Qwen3-4B and Qwen3-VL-4B on the CPU: the DiT's peak VRAM
   at 1024² (target <= 16 GB) and the stage timings.
8. ``compiled`` — ``engine.generation.accel.prepare(generator, compile=True)``: regional compile + the start-up warm-up (timed),
   the first request after it, and the compiled median. Target: >= 1.4x eager.
9. ``fp8`` — only with torchao and a GPU of compute capability >= 8.9 (else one ``fp8 skipped: ...`` line): a fresh
   DiT quantised by ``engine.generation.accel.quantize_fp8``, eager, then compiled after a one-shape warm-up (FP8 compiles take
   minutes: 165 s measured on an H200). Target: >= 1.9x bf16 eager. Skipped when the time budget
   (``GPU_FULL_BUDGET_S``, default 570 s) would be exceeded.

``GPU_FULL_SKIP=fp8,compiled`` skips sections by name. ``BENCH_COMPILE_BACKEND`` picks the ``torch.compile``
backend (default: inductor on the GPU, ``aot_eager`` in TINY mode, which checks the full-graph capture without a C++
build). The summary figures are printed at the end, the engine/raw ratio LAST.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
TINY = os.environ.get("TINY") == "1" or "--quick" in sys.argv or os.environ.get("BENCH_QUICK") == "1"
OUT = Path(ARGS[0] if ARGS else os.environ.get("OUT", "."))
DEV = torch.device("cpu" if TINY else "cuda")
BF = torch.bfloat16
SIZE, STEPS = (64, 2) if TINY else (1024, 9)
REF_SIDE = 128 if TINY else 1024
CAP_DIM = 64 if TINY else 2560
REPS = 2 if TINY else 3
CAPTION_ROWS = 40 if TINY else 512
BACKEND = os.environ.get("BENCH_COMPILE_BACKEND") or ("aot_eager" if TINY else None)
SKIP = {s.strip() for s in os.environ.get("GPU_FULL_SKIP", "").split(",") if s.strip()}
BUDGET_S = float(os.environ.get("GPU_FULL_BUDGET_S", "570"))
T_START = time.perf_counter()
NAME = "gpu_full"

res: dict = {"name": NAME, "tiny": TINY, "size": SIZE, "steps": STEPS, "reps": REPS, "sections": {}}
state: dict = {}


def elapsed() -> float:
    return time.perf_counter() - T_START


def save() -> None:
    C.write_json(OUT / "gpu_full.json", res)


def section(name: str, fn) -> None:
    if name in SKIP:
        print(f"[{name}] skipped (GPU_FULL_SKIP)", flush=True)
        res["sections"][name] = "skipped"
        save()
        return
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - record and go on: a timeout or an error still leaves the other data
        res[name + "_error"] = repr(e)[:600]
        traceback.print_exc()
    res["sections"][name] = round(time.perf_counter() - t0, 1)
    print(f"[{name}] {res['sections'][name]:.1f}s (total {elapsed():.0f}s)", flush=True)
    save()


def sync() -> None:
    C.sync(DEV)


def reset_peak() -> None:
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEV.type == "cuda" else 0.0


def allocated_gib() -> float:
    return round(torch.cuda.memory_allocated() / 2**30, 2) if DEV.type == "cuda" else 0.0


def free_memory() -> None:
    gc.collect()
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ model configs
def tokenizer():
    if "tok" not in state:
        from engine.models.tiny import build_tokenizer

        state["tok"] = build_tokenizer()
    return state["tok"]


def text_config():
    from transformers import Qwen3Config

    if TINY:
        return Qwen3Config(vocab_size=len(tokenizer()), hidden_size=CAP_DIM, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                           tie_word_embeddings=True, pad_token_id=tokenizer().pad_token_id)
    return Qwen3Config(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1000000.0,
                       max_position_embeddings=40960, tie_word_embeddings=True)


def vl_config():
    from transformers import Qwen3VLConfig

    from engine.models.tiny import SPECIAL_TOKENS

    ids = {t: tokenizer().convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if TINY:
        text = dict(vocab_size=len(tokenizer()), hidden_size=CAP_DIM, intermediate_size=128, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                    tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                                               "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=CAP_DIM,
                      num_position_embeddings=2304, deepstack_visual_indexes=[0, 1], patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2)
    else:  # Qwen3-VL-4B-Instruct's published config
        rope = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                "mrope_interleaved": True}
        text = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                    tie_word_embeddings=True, rope_parameters=rope)
        vision = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                      num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2)
    text["pad_token_id"] = tokenizer().pad_token_id
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_transformer():
    from diffusers import ZImageTransformer2DModel

    kw = dict(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, axes_dims=[8, 12, 12],
              cap_feat_dim=CAP_DIM) if TINY else {}
    with torch.device(DEV):
        tr = ZImageTransformer2DModel(axes_lens=[1536, 512, 512], **kw).to(BF)  # Z-Image-Turbo's published config
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0, 0.02)
    return tr.eval()


def build_vae():
    from diffusers import AutoencoderKL

    with torch.device(DEV):
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                            block_out_channels=[16] * 4 if TINY else [128, 256, 512, 512], layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                            use_post_quant_conv=False, sample_size=1024, norm_num_groups=8 if TINY else 32).to(BF)
    return vae.eval()


def skeleton_folders(root: Path) -> tuple[Path, Path]:
    """Model folders holding only what StylePipeline reads (configs, tokenizer); the modules are built in memory."""
    zdir, vdir = root / "zimage", root / "qwen3vl"
    for sub in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        (zdir / sub).mkdir(parents=True, exist_ok=True)
    (zdir / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline",
                                                       "_note": "skeleton: bench/gpu_full.py builds the modules"}))
    text_config().save_pretrained(zdir / "text_encoder")
    tokenizer().save_pretrained(zdir / "tokenizer")
    vdir.mkdir(parents=True, exist_ok=True)
    vl_config().save_pretrained(vdir)
    return zdir, vdir


# ------------------------------------------------------------------------------------------------ sections
def env() -> None:
    res["machine"] = C.machine()
    if DEV.type == "cuda":
        res["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        res["gpu_total_GiB"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import torchao

        res["torchao"] = torchao.__version__
    except ImportError:
        res["torchao"] = None
    from engine.models.loading import cpu_supports_bf16

    res["cpu_native_bf16"] = cpu_supports_bf16()
    print(f"{NAME}: {'TINY (CPU smoke test)' if TINY else 'full size'} on {C.describe(res['machine'])}", flush=True)


def build_dit() -> None:
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler

    from engine.generation.zimage import Generator
    from engine.generation.pipeline import StylePipeline

    t0 = time.perf_counter()
    tr, vae = build_transformer(), build_vae()
    sync()
    res["dit_build_s"] = round(time.perf_counter() - t0, 1)
    res["dit_params_B"] = round(sum(p.numel() for p in tr.parameters()) / 1e9, 3)
    gen = Generator(tr, vae, FlowMatchEulerDiscreteScheduler(shift=3.0), device=DEV, dtype=BF)
    state["tmp"] = tempfile.TemporaryDirectory(prefix="zvl-gpu-full-")
    zdir, vdir = skeleton_folders(Path(state["tmp"].name))
    state["vdir"] = vdir
    pipe = StylePipeline.from_pretrained(zdir, vdir, device=str(DEV), vl_device="cpu", text_device="cpu",
                                         dtype="bfloat16")
    pipe.models.provide("dit", gen)  # prebuilt modules (see BENCHMARKS.md)
    state["gen"], state["pipe"] = gen, pipe
    res["dit_resident_GiB"] = allocated_gib()


def engine_vs_raw() -> None:
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from engine.types import StylizeRequest

    gen, pipe = state["gen"], state["pipe"]
    caption = torch.randn(CAPTION_ROWS, CAP_DIM, generator=torch.Generator().manual_seed(1))
    state["caption"] = caption
    request = StylizeRequest(prompt="benchmark", seeds=(0,), steps=STEPS, width=SIZE, height=SIZE)
    raw = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=gen.pipe.vae,
                         transformer=gen.pipe.transformer, text_encoder=None, tokenizer=None)
    raw.set_progress_bar_config(disable=True)
    raw_caption = caption.to(DEV, BF)
    images: dict[str, list] = {"engine": [], "raw": []}

    def run_engine():
        images["engine"].append(pipe.generate(request, None, caption).images[0])

    def run_raw():
        images["raw"].append(raw(prompt_embeds=[raw_caption], height=SIZE, width=SIZE, num_inference_steps=STEPS,
                                 guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(0),
                                 output_type="pil").images[0])

    reset_peak()
    times = C.interleaved({"engine": run_engine, "raw": run_raw}, REPS, warmup=1, device=DEV)
    a, b = (np.asarray(images[k][0], dtype=np.int16) for k in ("engine", "raw"))
    res["engine_vs_raw"] = {
        "caption_rows": CAPTION_ROWS, "engine": C.stats(times["engine"]), "raw": C.stats(times["raw"]),
        "ratio_median_of_rounds": round(C.median_ratio(times["engine"], times["raw"]), 4),
        "ratio_of_medians": round(C.ratio_of_medians(times["engine"], times["raw"]), 4),
        "identical_images": bool(a.shape == b.shape and (a == b).all()),
        "max_pixel_diff": int(np.abs(a - b).max()) if a.shape == b.shape else -1,
        "peak_GiB_dit_vae_only": peak_gib(), "target": "<= 1.03",
    }
    state["eager_s"] = C.median(times["engine"])
    print(f"engine {C.median(times['engine']):.3f}s vs raw {C.median(times['raw']):.3f}s; identical images: "
          f"{res['engine_vs_raw']['identical_images']}; peak {peak_gib()} GiB", flush=True)


def vl_gpu() -> None:
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration

    from engine.models.loading import Qwen3VLImageOnlyProcessor
    from engine.models.tiny import CHAT_TEMPLATE
    from engine.conditioning.vision import VLExtractor

    t0 = time.perf_counter()
    with torch.device(DEV):
        model = Qwen3VLForConditionalGeneration(vl_config()).to(BF).eval()
    sync()
    res["vl_build_s"] = round(time.perf_counter() - t0, 1)
    res["vl_params_B"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    processor = Qwen3VLImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                                 image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                                 size={"shortest_edge": 65536, "longest_edge": 16777216}),
        tokenizer=tokenizer(), chat_template=CHAT_TEMPLATE)
    state["processor"] = processor
    ex = VLExtractor(state["vdir"], device=DEV, dtype=BF, model=model, processor=processor, max_image_tokens=1024)
    reference = C.reference_image(REF_SIDE, seed=5)
    state["reference"] = reference
    prompt = "a watercolor fox in the snow"
    base = allocated_gib()
    reset_peak()
    ex.extract(reference, prompt)  # warm-up
    times = []
    extract = ex.extract
    for _ in range(REPS):
        seconds, vl = C.timed(lambda: extract(reference, prompt), DEV)
        times.append(seconds)
    state["vl"] = vl
    res["vl_gpu"] = {"extract": C.stats(times), "image_tokens": vl.settings["image_tokens"],
                     "rows": int(vl.embeddings.shape[0]), "layers_run": vl.settings["layers_run"],
                     "num_layers": vl.settings["num_layers"], "peak_over_resident_GiB": round(peak_gib() - base, 2)}
    print(f"VL extraction on {DEV}: {C.median(times) * 1000:.0f} ms, {vl.settings['image_tokens']} image tokens, "
          f"{vl.settings['layers_run']} of {vl.settings['num_layers']} layers", flush=True)
    state["vl_model_cpu"] = model.to("cpu")
    del ex, model
    free_memory()


def vl_cpu() -> None:
    from engine.conditioning.vision import VLExtractor

    threads_before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not TINY:  # all cores, as a CPU-VL deployment would; the smoke test keeps the caller's threads
        torch.set_num_threads(cores or threads_before)
    try:
        ex = VLExtractor(state["vdir"], device="cpu", dtype=BF, model=state["vl_model_cpu"],
                         processor=state["processor"], max_image_tokens=1024)
        prompt = "a watercolor fox in the snow"
        ex.extract(state["reference"], prompt)  # warm-up
        seconds, vl = C.timed(lambda: ex.extract(state["reference"], prompt))
        res["vl_cpu"] = {"extract_s": round(seconds, 3), "threads": torch.get_num_threads(), "dtype": "bfloat16",
                         "image_tokens": vl.settings["image_tokens"], "layers_run": vl.settings["layers_run"]}
        state["vl_cpu_extractor"] = ex
        print(f"VL extraction on the CPU (bf16, {torch.get_num_threads()} threads): {seconds:.2f}s", flush=True)
    finally:
        torch.set_num_threads(threads_before)


def captions() -> None:
    from engine.types import BlendMode, StylizeRequest

    pipe, vl = state["pipe"], state.get("vl")
    if vl is None:
        raise RuntimeError("no VL result (the vl_gpu section failed)")
    text = torch.randn(32, CAP_DIM, generator=torch.Generator().manual_seed(2))
    common = dict(prompt="a watercolor fox in the snow", seeds=(0,), steps=STEPS, width=SIZE, height=SIZE)
    reference = state["reference"]
    variants = {
        "text_only": (StylizeRequest(alpha=0.0, **common), None),
        "pool": (StylizeRequest(reference=reference, alpha=0.3, blend_mode=BlendMode.POOL, **common), vl),
        "full_vl": (StylizeRequest(reference=reference, alpha=0.3, blend_mode=BlendMode.APPEND,
                                   append_tokens=1024, **common), vl),
    }
    rows: dict[str, int] = {}

    def runner(name):
        request, v = variants[name]

        def run():
            rows[name] = pipe.generate(request, v, text).params["caption_length"]

        return run

    times = C.interleaved({k: runner(k) for k in variants}, REPS, warmup=1, device=DEV)
    res["captions"] = {k: {"caption_rows": rows[k], **C.stats(times[k])} for k in variants}
    res["captions"]["full_vl_over_text_only"] = round(C.median_ratio(times["full_vl"], times["text_only"]), 4)
    res["captions"]["pool_over_text_only"] = round(C.median_ratio(times["pool"], times["text_only"]), 4)
    print("captions: " + ", ".join(f"{k} {rows[k]} rows {C.median(times[k]):.3f}s" for k in variants), flush=True)


def stylize_cpu_encoders() -> None:
    from transformers import Qwen3Model

    from engine.conditioning.text import TextEncoder
    from engine.types import StylizeRequest

    pipe = state["pipe"]
    t0 = time.perf_counter()
    with torch.device(DEV):
        model = Qwen3Model(text_config()).to(BF).eval()
    model = model.to("cpu")
    free_memory()
    res["text_build_s"] = round(time.perf_counter() - t0, 1)
    pipe.models.provide("text", TextEncoder(model, tokenizer(), device="cpu", dtype=BF))  # prebuilt (see build_dit)
    if "vl_cpu_extractor" not in state:
        raise RuntimeError("no CPU VL extractor (the vl_cpu section failed)")
    pipe.models.provide("vl", state["vl_cpu_extractor"])
    request = StylizeRequest(prompt="a watercolor fox in the snow, soft light", reference=state["reference"],
                             alpha=0.3, seeds=(0,), steps=STEPS, width=SIZE, height=SIZE)
    pipe.encode_prompt(request)  # warm-up of the CPU text encoder
    resident = allocated_gib()
    reset_peak()
    seconds, result = C.timed(lambda: pipe(request), DEV)
    peak = peak_gib()
    reserved = round(torch.cuda.max_memory_reserved() / 2**30, 2) if DEV.type == "cuda" else 0.0
    res["stylize_cpu_encoders"] = {
        "total_s": round(seconds, 3), "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "peak_vram_GiB": peak, "peak_vram_GB": round(peak * 2**30 / 1e9, 2), "peak_reserved_GiB": reserved,
        "resident_GiB": resident, "text_tokens": result.params["text_length"],
        "caption_rows": result.params["caption_length"], "target": "<= 16 GB",
    }
    print(f"stylize with both encoders on the CPU: {seconds:.2f}s, peak VRAM {peak} GiB "
          f"({res['stylize_cpu_encoders']['peak_vram_GB']} GB)", flush=True)
    pipe.models.provide("text", None)
    pipe.models.provide("vl", None)
    state.pop("vl_cpu_extractor", None)
    state.pop("vl_model_cpu", None)
    del model
    free_memory()


def compiled() -> None:
    from engine.generation import accel
    from engine.types import StylizeRequest

    gen, pipe = state["gen"], state["pipe"]
    report = accel.prepare(gen, compile=True, width=SIZE, height=SIZE, backend=BACKEND,
                           log_fn=lambda s: print("  " + s, flush=True))
    res["compile_startup"] = report
    request = StylizeRequest(prompt="benchmark", seeds=(0,), steps=STEPS, width=SIZE, height=SIZE)
    caption = state["caption"]
    before = accel.compiled_graphs()
    first_s, _ = C.timed(lambda: pipe.generate(request, None, caption), DEV)
    new_graphs = accel.compiled_graphs() - before
    times = C.interleaved({"compiled": lambda: pipe.generate(request, None, caption)}, REPS, warmup=0, device=DEV)
    eager = state.get("eager_s")
    res["compiled"] = {
        "backend": BACKEND or "inductor", "warmup_s": report.get("warm_up", {}).get("seconds"),
        "first_request_after_warmup_s": round(first_s, 3), "first_request_new_graphs": new_graphs,
        "compiled": C.stats(times["compiled"]), "eager_s": round(eager, 4) if eager else None,
        "speedup_eager_over_compiled": round(eager / C.median(times["compiled"]), 4) if eager else None,
        "target": ">= 1.4",
    }
    print(f"compiled: warm-up {res['compiled']['warmup_s']}s, first request after it {first_s:.2f}s "
          f"({new_graphs} new graphs), median {C.median(times['compiled']):.3f}s", flush=True)


def fp8() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from engine.generation import accel
    from engine.generation.zimage import Generator
    from engine.types import StylizeRequest

    reason = accel.fp8_unavailable_reason(DEV)
    if reason is not None:
        res["fp8_skipped"] = reason
        print(f"fp8 skipped: {reason}", flush=True)
        return
    if BUDGET_S - elapsed() < 240:
        res["fp8_skipped"] = f"time budget: {elapsed():.0f}s of {BUDGET_S:.0f}s used"
        print(f"fp8 skipped: {res['fp8_skipped']}", flush=True)
        return
    pipe = state["pipe"]
    state.pop("gen", None)
    pipe.models.provide("dit", None)
    free_memory()
    torch._dynamo.reset()
    gen = Generator(build_transformer(), build_vae(), FlowMatchEulerDiscreteScheduler(shift=3.0), device=DEV,
                    dtype=BF)
    pipe.models.provide("dit", gen)
    report = accel.prepare(gen, fp8=True, warm=False, strict=True)
    request = StylizeRequest(prompt="benchmark", seeds=(0,), steps=STEPS, width=SIZE, height=SIZE)
    caption = state["caption"]
    run = lambda: pipe.generate(request, None, caption)  # noqa: E731
    reset_peak()
    eager = C.interleaved({"fp8_eager": run}, REPS, warmup=1, device=DEV)["fp8_eager"]
    out = {"linears": report.get("fp8_linears"), "quantize_s": report.get("fp8_s"), "eager": C.stats(eager),
           "eager_peak_GiB": peak_gib()}
    res["fp8"] = out
    save()
    if BUDGET_S - elapsed() < 200:
        out["compile_skipped"] = f"time budget: {elapsed():.0f}s of {BUDGET_S:.0f}s used"
        print(f"fp8 compile skipped: {out['compile_skipped']}", flush=True)
        return
    accel.compile_transformer(gen, backend=BACKEND)
    warm = accel.warm_up(gen, width=SIZE, height=SIZE, caption_lengths=(CAPTION_ROWS,), batch_sizes=(1,),
                         log_fn=lambda s: print("  " + s, flush=True))
    compiled_times = C.interleaved({"fp8_compiled": run}, REPS, warmup=1, device=DEV)["fp8_compiled"]
    base = state.get("eager_s")
    out.update({"compile_warmup_one_shape_s": warm["seconds"], "compiled": C.stats(compiled_times),
                "speedup_bf16_eager_over_fp8_compiled": round(base / C.median(compiled_times), 4) if base else None,
                "target": ">= 1.9"})


def summary() -> list[str]:
    lines = []

    def add(what: str, value, digits: int = 3):
        if isinstance(value, (int, float)):
            lines.append(C.figure(NAME, what, float(value), digits))

    g = lambda *keys: _dig(res, keys)  # noqa: E731
    add("compiled speed-up (eager/compiled, 1024², 9 steps)" if not TINY else "compiled speed-up (eager/compiled)",
        g("compiled", "speedup_eager_over_compiled"))
    add("compile start-up warm-up seconds", g("compiled", "warmup_s"), 1)
    add("fp8+compile speed-up (bf16 eager/fp8 compiled)", g("fp8", "speedup_bf16_eager_over_fp8_compiled"))
    full_rows, text_rows = g("captions", "full_vl", "caption_rows"), g("captions", "text_only", "caption_rows")
    add(f"full VL caption cost ({full_rows} rows/{text_rows} rows)", g("captions", "full_vl_over_text_only"))
    add("peak VRAM GiB, stylize with both encoders on CPU", g("stylize_cpu_encoders", "peak_vram_GiB"), 2)
    add(f"VL extraction seconds on {DEV.type} ({REF_SIDE}² reference)", g("vl_gpu", "extract", "median_s"), 4)
    add(f"VL extraction seconds on cpu (bf16, {g('vl_cpu', 'threads')} threads)", g("vl_cpu", "extract_s"), 2)
    rounds = g("engine_vs_raw", "engine", "n") or REPS
    add(f"engine/raw ratio (median of {rounds} interleaved)", g("engine_vs_raw", "ratio_median_of_rounds"))
    return lines


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    C.quiet()
    for name, fn in (("env", env), ("build_dit", build_dit), ("engine_vs_raw", engine_vs_raw), ("vl_gpu", vl_gpu),
                     ("vl_cpu", vl_cpu), ("captions", captions), ("stylize_cpu_encoders", stylize_cpu_encoders),
                     ("compiled", compiled), ("fp8", fp8)):
        section(name, fn)
    res["total_s"] = round(elapsed(), 1)
    errors = sorted(k for k in res if k.endswith("_error"))
    lines = summary()
    res["summary"] = lines
    save()
    print(f"\nwrote {OUT / 'gpu_full.json'}; total {res['total_s']}s; errors: {', '.join(errors) or 'none'}")
    if res.get("fp8_skipped"):
        print(f"fp8 skipped: {res['fp8_skipped']}")
    for line in lines:
        print(line, flush=True)
    if not lines or "engine/raw" not in lines[-1]:
        print(C.figure(NAME, "engine/raw ratio (failed, see gpu_full.json)", float("nan")), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
