"""Loading models from local folders, and the device / dtype policy.

Every load here is the real ``from_pretrained(local_dir)`` path that real weight folders use; nothing is fetched
from a model hub (``local_files_only=True`` everywhere).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3VLProcessor

from engine.config import parse_device

log = logging.getLogger(__name__)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without the video processor.

    The stock processor type-checks its video slot against a torchvision-only class, so it cannot be built or
    loaded on a machine without torchvision (``AutoProcessor`` on the hub layout raises an ImportError, and with an
    unknown ``processor_class`` it silently returns only the tokenizer). Images are all this project sends, so the
    video slot is left empty; ``ProcessorMixin`` reads the slots from this ``__init__`` signature. On a machine with
    torchvision the image processor may be the "fast" backend; without it, the PIL backend is used.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` from ``auto | cpu | cuda | cuda:N``; ``auto`` is the first CUDA device when there is one,
    else the CPU."""
    if isinstance(device, torch.device):
        return device
    device = parse_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: The DiT's device: ``auto`` means CUDA when present.
resolve_dit_device = resolve_device


def free_memory() -> None:
    """``gc.collect()`` (drop reference cycles so freed weights really go) and, with CUDA, ``empty_cache()``.

    Used after an unload and after a failed job.
    """
    import gc

    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - a broken CUDA context must not break an unload
            log.warning("torch.cuda.empty_cache() failed", exc_info=True)


def resolve_vl_device(vl_device: str, dit_device: torch.device, vl_bytes: int, headroom_bytes: int = 2 << 30) -> torch.device:
    """The ``auto`` policy for Qwen3-VL: the GPU when it has room for the VL model beside the DiT, else the CPU.

    Extraction on an H200 took 58 ms for a 1024² reference against 5.7 s on 16 CPU cores, so the GPU wins whenever
    the weights (``vl_bytes``) plus ``headroom_bytes`` of activations fit in the free memory; a 24 GB card running
    the 6B DiT does not have that room, which is when the seed's advice (VL on the CPU) applies.
    """
    vl_device = parse_device(vl_device, "vl_device")
    if vl_device != "auto":
        return torch.device(vl_device)
    if dit_device.type != "cuda" or not torch.cuda.is_available():
        return torch.device("cpu")
    free, _total = torch.cuda.mem_get_info(dit_device)
    if free >= vl_bytes + headroom_bytes:
        return dit_device
    log.info("vl_device=auto: %.1f GiB free on %s is too little for Qwen3-VL; using the CPU", free / 2**30, dit_device)
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix units (AMX or AVX512-BF16).

    Measured with Qwen3-VL-4B on a Xeon with AMX: bf16 was 2.6x faster than float32. Without these units bf16 is
    emulated and slower, so float32 is used instead.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on the GPU; on the CPU bfloat16 where it is native, float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def parse_dtype(value: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` (or None) → :func:`default_dtype`; else one of float32, bfloat16, float16."""
    if isinstance(value, torch.dtype):
        return value
    if value in (None, "auto"):
        return default_dtype(device)
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return names[str(value).lower()]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16; got {value!r}") from None


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def check_zimage_folder(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` looks like a diffusers Z-Image folder (model_index.json + components)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"Z-Image folder {path} does not exist")
    if not (path / "model_index.json").is_file():
        raise ValueError(f"Z-Image folder {path} has no model_index.json (expected a diffusers ZImagePipeline folder)")
    for sub in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        if not (path / sub).is_dir():
            raise ValueError(f"Z-Image folder {path} has no {sub}/ folder")


def check_vl_folder(path: Path) -> dict[str, Any]:
    """Raise ``ValueError`` unless ``path`` is a Qwen3-VL folder; returns its ``config.json``."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"Qwen3-VL folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"Qwen3-VL folder {path} has no config.json")
    return read_json(path / "config.json")


def vl_num_layers(path: Path) -> int:
    """Number of decoder layers of the Qwen3-VL text model in ``path`` (36 for Qwen3-VL-4B)."""
    cfg = check_vl_folder(path)
    text = cfg.get("text_config", cfg)
    return int(text["num_hidden_layers"])


def processor_pixel_bounds(image_processor: Any) -> tuple[int, int | None, int | None]:
    """``(pixels per token side, min pixels, max pixels)`` of a Qwen-VL image processor.

    One image token covers ``patch_size * merge_size`` pixels on each side (32 for Qwen3-VL); the processor scales
    every image into ``[min, max]`` pixels (``size.shortest_edge`` / ``longest_edge``, or ``min_pixels`` /
    ``max_pixels`` in older configs); ``None`` where it sets no bound.
    """
    ip = image_processor
    factor = int(getattr(ip, "patch_size", 16)) * int(getattr(ip, "merge_size", 2))
    size = getattr(ip, "size", None) or {}
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    lo = get("shortest_edge", None) or getattr(ip, "min_pixels", None)
    hi = get("longest_edge", None) or getattr(ip, "max_pixels", None)
    return factor, lo, hi


def vl_min_image_tokens(path: Path) -> int:
    """The fewest image tokens the Qwen3-VL processor in ``path`` gives any image (64 for Qwen3-VL-4B): it scales
    every image up to its minimum pixel count, so a token budget below this can never be met."""
    factor, lo, _hi = processor_pixel_bounds(load_vl_processor(path).image_processor)
    return max(1, math.ceil((lo or 0) / (factor * factor)))


def load_vl_processor(path: Path) -> Qwen3VLImageOnlyProcessor:
    """The image-only Qwen3-VL processor from a local folder (hub layout or this project's tiny layout)."""
    return Qwen3VLImageOnlyProcessor.from_pretrained(str(path), local_files_only=True)


#: One model load at a time in this process (see :func:`model_loading`).
_LOAD_LOCK = threading.RLock()


@contextmanager
def model_loading():
    """Wrap every ``from_pretrained`` of a model: one load at a time, and no progress bars.

    * Serialised: transformers and diffusers build a model on the ``meta`` device by patching process-wide state
      (``init_empty_weights``), so two loads in two threads — the worker's VL and DiT stage threads both loading
      at start-up, or the next job's Qwen3-VL while the DiT loads — can break each other ("Cannot copy out of meta
      tensor"). Loads are rare and slow; waiting for each other costs nothing that matters.
    * Quiet: a worker or a ``--quiet`` CLI must not get "Loading weights" tqdm bars on stderr. The previous state is
      restored afterwards, so callers that enabled the bars on purpose keep them for everything else.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    with _LOAD_LOCK:
        with _quiet_bars(transformers_logging, diffusers_logging):
            yield


@contextmanager
def _quiet_bars(transformers_logging, diffusers_logging):
    t_was = transformers_logging.is_progress_bar_enabled()
    d_was = diffusers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if t_was:
            transformers_logging.enable_progress_bar()
        if d_was:
            diffusers_logging.enable_progress_bar()
