"""Shared helpers of the benchmark scripts: modes, interleaved timing, medians, machine description, JSON output,
and random model folders in the real Hugging Face layout (bigger than ``engine.models.tiny``'s, same code path).

Conventions every script here follows:

* ``--quick`` (or ``BENCH_QUICK=1``) runs a tiny, fast version (the tests run that); the full mode is what
  BENCHMARKS.md records.
* The script's main figure is printed LAST, as one line ``<name> <what> (<how>): <number>`` (see :func:`figure`),
  so a test or a person can read it with ``tail -1``.
* ``--json PATH`` writes every measurement plus :func:`machine` (date, CPU model, cores, threads, versions, GPU,
  commit) to PATH.
* Timed runs of competing variants are *interleaved* (ABBA order, after untimed warm-ups) so that drift from other
  processes on a shared machine hits every variant alike; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------------ modes, arguments
def quick_requested(argv: Sequence[str] | None = None) -> bool:
    """``--quick`` on the command line or ``BENCH_QUICK=1`` in the environment."""
    argv = sys.argv[1:] if argv is None else argv
    return "--quick" in argv or os.environ.get("BENCH_QUICK", "") == "1"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every bench script takes: --quick, --json, --reps, --threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny, fast mode (also BENCH_QUICK=1); what the tests run")
    p.add_argument("--json", type=Path, default=None, help="write all measurements and the machine to this file")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per variant (default: per mode)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own, i.e. OMP_NUM_THREADS or all cores)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = p.parse_args(argv)
    args.quick = bool(args.quick) or quick_requested([])
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, int(args.threads)))
    return args


# ------------------------------------------------------------------------------------------------ timing
def sync(device: Any = None) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = None) -> tuple[float, Any]:
    """``(seconds, fn())`` with GPU work included when ``device`` is CUDA."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1, device: Any = None,
                log: Callable[[str], None] | None = print,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Time every variant ``rounds`` times, interleaved in ABBA order after ``warmup`` untimed calls of each.

    Returns ``{name: [wall seconds per round]}``. Round ``i`` runs the variants in order on even ``i`` and reversed
    on odd ``i``, so a slow drift (another process starting, thermal throttling) biases no variant. When ``cpu`` is
    a dict it receives ``{name: [process CPU seconds per round]}``: with one torch thread on a machine shared with
    other work, CPU time is barely touched by time slices lost to other processes, where wall time is.
    """
    names = list(runs)
    for _ in range(max(0, warmup)):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    if cpu is not None:
        cpu.update({name: [] for name in names})
    for i in range(max(1, rounds)):
        for name in (names if i % 2 == 0 else names[::-1]):
            c0 = time.process_time()
            seconds, _ = timed(runs[name], device)
            if cpu is not None:
                cpu[name].append(time.process_time() - c0)
            times[name].append(seconds)
        if log is not None:
            log(f"  round {i + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio_of_mins(a: Sequence[float], b: Sequence[float]) -> float:
    """``min(a) / min(b)``: the least-disturbed run of each (useful on a machine shared with other work)."""
    return min(a) / min(b) if a and b and min(b) > 0 else float("nan")


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    return median(a) / median(b) if b and median(b) > 0 else float("nan")


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of the per-round ratios ``a[i] / b[i]`` (robust to drift between rounds)."""
    return median([x / y for x, y in zip(a, b) if y > 0])


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw values (rounded to 0.1 ms)."""
    return {"median_s": round(median(values), 4), "min_s": round(min(values), 4) if values else None,
            "max_s": round(max(values), 4) if values else None, "n": len(values),
            "values_s": [round(v, 4) for v in values]}


# ------------------------------------------------------------------------------------------------ machine, output
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def commit() -> dict[str, Any]:
    """``{"commit": short hash, "dirty": [tracked files under engine/ or bench/ that differ from it]}``."""
    changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no", "--", "engine",
                                          "bench").splitlines() if len(line) > 3]
    return {"commit": _git("rev-parse", "--short", "HEAD").strip() or "unknown", "dirty": changed}


def command() -> str:
    """How this run was started, as one could type it again from the repository root."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is not None and script.is_relative_to(ROOT):
        script_s = str(script.relative_to(ROOT))
    else:
        script_s = sys.argv[0] if sys.argv else "?"
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "BENCH_QUICK", "TINY") if k in os.environ)
    return " ".join(filter(None, [env, "python", script_s, *sys.argv[1:]]))


def machine() -> dict[str, Any]:
    """Date (UTC), CPU model, cores, torch threads, versions, GPU name, commit and the command line."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": command(),
    }
    for mod in ("diffusers", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing library is just not reported
            info[mod] = None
    info.update(commit())
    return info


def describe(m: dict[str, Any]) -> str:
    """One line for the log: ``<cpu>, <cores> cores, <threads> torch threads[, GPU <name>], torch <v>, <commit>``."""
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    dirty = f" (+{len(m['dirty'])} uncommitted engine/bench files)" if m.get("dirty") else ""
    return (f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads{gpu}, torch {m['torch']}, "
            f"commit {m['commit']}{dirty}, {m['date']}, load average {m.get('loadavg_1m_at_start')}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: Path | str, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temporary file + ``os.replace``), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(_jsonable(data), fh, indent=1, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def figure(name: str, what: str, value: float, digits: int = 3) -> str:
    """The one-line figure format: ``engine_overhead ratio (engine/raw, median of 5 interleaved): 1.004``."""
    return f"{name} {what}: {value:.{digits}f}"


def finish(line: str, results: dict[str, Any], json_path: Path | str | None) -> None:
    """Write the JSON (when asked) and print the figure line last."""
    if json_path is not None:
        write_json(json_path, results)
    sys.stdout.flush()
    print(line, flush=True)


# ------------------------------------------------------------------------------------------------ random models
def rope_axes(head_dim: int) -> list[int]:
    """Z-Image RoPE axis split for a head dim (64 → [16, 24, 24], 32 → [8, 12, 12]; even sizes summing to it)."""
    side = (3 * head_dim // 8) // 2 * 2
    return [head_dim - 2 * side, side, side]


def mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL interleaved M-RoPE split of ``head_dim / 2`` summing to it (16 → [2, 3, 3], 32 → [4, 6, 6])."""
    half = head_dim // 2
    side = 3 * half // 8
    return [half - 2 * side, side, side]


def build_zimage_folder(path: Path | str, *, dim: int = 64, n_layers: int = 2, n_refiner_layers: int = 1,
                        n_heads: int = 2, cap_dim: int = 64, vae_channels: Sequence[int] = (32, 32, 32, 32),
                        text_layers: int = 2, seed: int = 0) -> Path:
    """A random diffusers ``ZImagePipeline`` folder (transformer, VAE, scheduler shift 3.0, Qwen3 text encoder of
    width ``cap_dim`` and :func:`engine.models.tiny.build_tokenizer`) written with ``save_pretrained``, as
    :func:`engine.models.tiny.make_tiny` does, with the sizes given. Loaded later through the engine's real path."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from engine.models.tiny import build_tokenizer

    path = Path(path)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=dim, n_layers=n_layers,
        n_refiner_layers=n_refiner_layers, n_heads=n_heads, n_kv_heads=n_heads, norm_eps=1e-5, qk_norm=True,
        cap_feat_dim=cap_dim, rope_theta=256.0, t_scale=1000.0, axes_dims=rope_axes(dim // n_heads),
        axes_lens=[1536, 512, 512],
    )
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=list(vae_channels), layers_per_block=1,
        latent_channels=16, norm_num_groups=min(32, min(vae_channels)), sample_size=128, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    torch.manual_seed(seed + 2)
    heads = max(1, cap_dim // 32)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=cap_dim, intermediate_size=2 * cap_dim, num_hidden_layers=text_layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=32 if cap_dim >= 64 else 16,
        max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
    ))
    ZImagePipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler,
                   text_encoder=text_encoder.eval(), tokenizer=tokenizer).save_pretrained(path)
    return path


def build_vl_folder(path: Path | str, *, hidden: int = 64, layers: int = 8, heads: int = 4, kv_heads: int = 2,
                    head_dim: int = 16, intermediate: int | None = None, vision_depth: int = 2,
                    vision_hidden: int = 32, vision_heads: int = 2, vision_intermediate: int | None = None,
                    deepstack: Sequence[int] | None = None, seed: int = 3) -> Path:
    """A random Qwen3-VL folder (model + image-only processor) like :func:`engine.models.tiny.make_tiny`'s, with the depth
    and widths given: 16 px patches merged 2x2 (32 px per token), text width ``hidden`` (= the DiT caption width)."""
    import torch
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from engine.models.loading import Qwen3VLImageOnlyProcessor
    from engine.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

    path = Path(path)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if deepstack is None:
        deepstack = sorted({max(0, vision_depth * k // 4 - 1) for k in (1, 2, 3)}) if vision_depth >= 3 else [0]
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                             "mrope_section": mrope_section(head_dim), "mrope_interleaved": True},
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_intermediate or 2 * vision_hidden,
            num_heads=vision_heads, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
            out_hidden_size=hidden, num_position_embeddings=2304, deepstack_visual_indexes=list(deepstack),
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32, "longest_edge": 2048 * 2048},
    )
    processor = Qwen3VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def reference_image(side: int, seed: int = 0, height: int | None = None):
    """A deterministic random RGB PIL image of ``side x height`` (noise: what the VL sees does not change its cost)."""
    import numpy as np
    from PIL import Image

    h = side if height is None else height
    return Image.fromarray((np.random.RandomState(seed).rand(h, side, 3) * 255).astype("uint8"))


def quiet() -> None:
    """Silence the load progress bars and the 'keep modules in float32' chatter of diffusers/transformers."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


class WorkerSettings:
    """The settings an ``EngineWorker`` reads, for the worker benchmarks (no .env, no profile, no caps in the way)."""

    max_jobs_per_user = 1000
    max_jobs_total = 1000
    job_timeout_s = 600.0
    vl_auto_unload = False
    vl_idle_unload_s = 0.0
    cpu_threads = 1
