"""Optional DiT acceleration: regional ``torch.compile`` (setting ``compile``) and FP8 (setting ``fp8``, torchao).

Both act in place on a loaded :class:`engine.generation.zimage.Generator`'s transformer (shared by its txt2img and img2img
pipelines) and are meant to run once at start-up, followed by :func:`warm_up`, so that no user's first request pays
for compilation. :func:`prepare` does all three in the right order (FP8 before compile) and returns a report.

Measured with random weights at the published Z-Image config on an H200, 1024², 9 steps, 512-token caption
(``docs/anchors.md``): bf16 eager 1.56 s; regional compile 1.11 s (20 s warm-up); FP8 eager 1.98 s; FP8 + regional
compile 0.80 s (165 s warm-up).

* **compile** — ``transformer.compile_repeated_blocks(fullgraph=True)``: every ``ZImageTransformerBlock`` (main layers
  and both refiners) is compiled, once per distinct graph, on its first call. A new caption length, image size or
  batch size recompiles the first time it is seen; from the second distinct value of a dimension on, dynamo marks it
  dynamic and stops recompiling. :func:`warm_up` therefore runs a few short generations (one step each) that vary the
  caption length and the batch size. ``backend`` is passed to ``torch.compile`` (``None``: inductor).
* **fp8** — torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` (dynamic row-wise float8
  activations and weights) on the ``nn.Linear`` layers of the main transformer blocks (``layers.*``; the refiners,
  embedders and final layer stay bf16) whose in/out features are multiples of 16. Needs torchao (the optional extra
  ``fp8``: ``pip install 'zvl-bot[fp8]'``) and a CUDA GPU with compute capability 8.9 or newer (Ada, Hopper,
  Blackwell). Slower than bf16 without compile; pair it with ``compile``.

Wiring: with either setting on, ``StylePipeline`` gives its Generator ``on_build=prepare(...)``, so both are applied
each time the DiT is built (an unload + reload replaces the transformer); the worker's start-up ``preload`` builds
it, so the warm-up happens before the first request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Caption lengths (rows) and batch sizes :func:`warm_up` runs by default: two lengths (so the sequence dimension
#: becomes dynamic) and two batch sizes (several seeds, CFG).
DEFAULT_WARM_CAPTIONS = (32, 300)
DEFAULT_WARM_BATCHES = (1, 2)
FP8_MIN_CAPABILITY = (8, 9)


class AccelUnavailable(RuntimeError):
    """An acceleration was asked for but cannot run here; ``str()`` says why in one line."""


def _transformer(generator: Any) -> torch.nn.Module:
    return generator.pipe.transformer


# ------------------------------------------------------------------------------------------------ FP8
def fp8_unavailable_reason(device: torch.device | str) -> str | None:
    """``None`` when FP8 can run on ``device``, else one line saying why not."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_  # noqa: F401
    except ImportError as exc:
        return f"torchao is not installed or too old ({exc.__class__.__name__}: {exc}); pip install 'zvl-bot[fp8]'"
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"FP8 needs a CUDA GPU (compute capability >= 8.9); the DiT is on {device}"
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < FP8_MIN_CAPABILITY:
        return (f"FP8 needs compute capability >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}; "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}")
    return None


def fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """The Linears FP8 quantises: inside the main blocks (``layers.N.*``), with in/out features multiples of 16."""
    return (isinstance(module, torch.nn.Linear) and f".{fqn}".startswith(".layers.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def quantize_fp8(generator: Any, *, check: bool = True) -> int:
    """Quantise the transformer's block Linears to dynamic row-wise float8 in place; returns how many were converted.

    Raises :class:`AccelUnavailable` (torchao missing, no suitable GPU) unless ``check=False``.
    """
    if check:
        reason = fp8_unavailable_reason(generator.device)
        if reason is not None:
            raise AccelUnavailable(reason)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    tr = _transformer(generator)
    count = sum(1 for name, m in tr.named_modules() if fp8_filter(m, name))
    quantize_(tr, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter)
    return count


# ------------------------------------------------------------------------------------------------ compile
def compile_transformer(generator: Any, *, fullgraph: bool = True, backend: str | None = None,
                        mode: str | None = None) -> None:
    """Regional compile: ``transformer.compile_repeated_blocks(fullgraph=...)`` (compiles lazily, on first call)."""
    kwargs: dict[str, Any] = {"fullgraph": fullgraph}
    if backend is not None:
        kwargs["backend"] = backend
    if mode is not None:
        kwargs["mode"] = mode
    _transformer(generator).compile_repeated_blocks(**kwargs)


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process (goes up on every compile or recompile)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a private counter; 0 when it moves
        return 0


def warm_up(generator: Any, *, width: int = 1024, height: int = 1024,
            caption_lengths: Sequence[int] = DEFAULT_WARM_CAPTIONS, batch_sizes: Sequence[int] = DEFAULT_WARM_BATCHES,
            steps: int = 1, log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run short generations (``steps`` each, no decode) so compilation happens now, not on a user's request.

    Runs every caption length at batch 1, then every further batch size at the first caption length. Returns
    ``{"seconds": total, "runs": [{"caption", "batch", "seconds", "new_graphs"}, ...]}``.
    """
    dim = int(_transformer(generator).config.cap_feat_dim)
    shapes = [(int(n), 1) for n in caption_lengths] + [(int(caption_lengths[0]), int(b)) for b in batch_sizes if b != 1]
    runs = []
    t_all = time.perf_counter()
    gen = torch.Generator("cpu").manual_seed(0)
    for rows, batch in shapes:
        caption = torch.randn(rows, dim, generator=gen)
        before = compiled_graphs()
        t0 = time.perf_counter()
        generator.denoise(caption, seeds=list(range(batch)), steps=steps, width=width, height=height)
        if generator.device.type == "cuda":
            torch.cuda.synchronize(generator.device)
        run = {"caption": rows, "batch": batch, "seconds": round(time.perf_counter() - t0, 3),
               "new_graphs": compiled_graphs() - before}
        runs.append(run)
        if log_fn is not None:
            log_fn(f"warm-up {width}x{height}, caption {rows}, batch {batch}: {run['seconds']:.1f}s "
                   f"({run['new_graphs']} new graphs)")
    return {"seconds": round(time.perf_counter() - t_all, 3), "runs": runs}


# ------------------------------------------------------------------------------------------------ all together
def prepare(generator: Any, *, compile: bool = False, fp8: bool = False, warm: bool = True, width: int = 1024,
            height: int = 1024, backend: str | None = None, caption_lengths: Sequence[int] = DEFAULT_WARM_CAPTIONS,
            batch_sizes: Sequence[int] = DEFAULT_WARM_BATCHES, strict: bool = False,
            log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Apply the settings ``fp8`` then ``compile`` to a loaded Generator and warm up; returns what happened.

    The report holds ``fp8`` / ``compile`` (applied or not), ``fp8_linears``, ``fp8_s``, ``warm_up`` (see
    :func:`warm_up`) and ``errors`` / ``skipped`` lines. With ``strict=False`` an unavailable FP8 is skipped with a
    logged line (the bot keeps running in bf16); ``strict=True`` raises :class:`AccelUnavailable`.
    Does nothing (and warms nothing) when both settings are off.
    """
    report: dict[str, Any] = {"fp8": False, "compile": False, "skipped": [], "errors": []}
    generator.load()
    if fp8:
        reason = fp8_unavailable_reason(generator.device)
        if reason is not None:
            if strict:
                raise AccelUnavailable(reason)
            log.warning("fp8 skipped: %s", reason)
            report["skipped"].append(f"fp8: {reason}")
        else:
            t0 = time.perf_counter()
            report["fp8_linears"] = quantize_fp8(generator, check=False)
            report["fp8_s"] = round(time.perf_counter() - t0, 3)
            report["fp8"] = True
    if compile:
        compile_transformer(generator, backend=backend)
        report["compile"] = True
    if warm and (report["compile"] or report["fp8"]):
        report["warm_up"] = warm_up(generator, width=width, height=height, caption_lengths=caption_lengths,
                                    batch_sizes=batch_sizes, log_fn=log_fn)
    return report
