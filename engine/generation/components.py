"""ModelSet: the three lazily built models behind a :class:`~engine.generation.pipeline.StylePipeline`.

The Qwen3 text encoder, Qwen3-VL and the Z-Image DiT + VAE each load from a local folder on first need;
:meth:`ModelSet.load` / :meth:`ModelSet.unload` manage them per component (``vl``, ``text``, ``dit``, ``all``).
Devices: ``device`` for the DiT (auto: CUDA when present), ``text_device`` (auto: with the DiT), ``vl_device`` (auto:
the DiT's GPU when it has room for Qwen3-VL beside the DiT, else the CPU; :func:`engine.models.loading.resolve_vl_device`).
``dtype`` auto: bf16 on the GPU, bf16 on CPUs with native bf16, float32 on other CPUs (per component, by its device).

Reference statistics (per-dimension mean/std of the text encoder's layer output, needed by ``per_dim``/``hybrid``
normalisation and by outlier masking) are computed once per text encoder and layer and memoised here; a caller that
keeps them elsewhere (the worker's embedding cache) seeds the memo with :meth:`ModelSet.seed_reference_stats`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from engine.conditioning.text import MAX_SEQUENCE_LENGTH, ReferenceStats, TextEncoder, check_layer
from engine.conditioning.vision import VLExtractor
from engine.generation.zimage import Generator
from engine.config import parse_device
from engine.models.loading import (
    check_vl_folder,
    check_zimage_folder,
    parse_dtype,
    read_json,
    resolve_dit_device,
    resolve_vl_device,
    vl_num_layers,
)

__all__ = ["COMPONENTS", "ModelSet"]

log = logging.getLogger(__name__)

COMPONENTS = ("vl", "text", "dit", "all")



def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def _image_tokens(value: Any) -> int:
    try:
        tokens = int(value)
    except (TypeError, ValueError):
        tokens = 0
    if isinstance(value, bool) or tokens < 1:
        raise ValueError(f"vl_max_image_tokens must be an integer >= 1; got {value!r}")
    return tokens


class ModelSet:
    """Qwen3 text encoder, Qwen3-VL and Z-Image DiT, each created and loaded on first need from its folder."""

    def __init__(self, zimage_path: str | Path, vl_path: str | Path | None = None, *, device: str = "auto",
                 vl_device: str = "auto", text_device: str = "auto", dtype: str | torch.dtype = "auto",
                 vl_max_image_tokens: int = 1024, vl_auto_unload: bool = False, compile: bool = False,
                 fp8: bool = False, warm_size: tuple[int, int] = (1024, 1024)):
        if zimage_path is None:
            raise ValueError("zimage_path is not set (a diffusers Z-Image folder is required)")
        self.zimage_path = Path(zimage_path)
        check_zimage_folder(self.zimage_path)
        self.vl_path = Path(vl_path) if vl_path is not None else None
        if self.vl_path is not None:
            check_vl_folder(self.vl_path)
        self._device_setting = parse_device(device, "device")
        self._vl_device_setting = parse_device(vl_device, "vl_device")
        self._text_device_setting = parse_device(text_device, "text_device")
        self._dtype_setting = dtype
        if not isinstance(dtype, torch.dtype):
            parse_dtype(dtype, torch.device("cpu"))  # validate the name now
        self.vl_max_image_tokens = _image_tokens(vl_max_image_tokens)
        self.vl_auto_unload = bool(vl_auto_unload)
        #: Optional DiT acceleration (``engine.generation.accel``): applied, with its warm-up, each time the DiT is built.
        self.compile, self.fp8, self.warm_size = bool(compile), bool(fp8), warm_size
        self.dit_device = resolve_dit_device(self._device_setting)
        self._vl_dev: torch.device | None = None
        self._lock = threading.RLock()
        self._text: TextEncoder | None = None
        self._vl: VLExtractor | None = None
        self._gen: Generator | None = None
        self._stats: dict[str, ReferenceStats] = {}
        #: Layer counts read from the folders' configs (no model loaded): what ``check_inputs`` checks layers against.
        self.text_layers = int(read_json(self.zimage_path / "text_encoder" / "config.json")["num_hidden_layers"])
        self.vl_layers = vl_num_layers(self.vl_path) if self.vl_path is not None else None

    @classmethod
    def from_settings(cls, settings: Any) -> ModelSet:
        """Build from a settings object's ``zimage_path, vl_path, device, vl_device, text_device, dtype,
        vl_max_image_tokens, vl_auto_unload, compile, fp8, width, height`` attributes (missing ones take the
        defaults; width/height are the size the compile warm-up runs at)."""
        get = lambda name, default: getattr(settings, name, default)  # noqa: E731
        return cls(get("zimage_path", None), get("vl_path", None), device=get("device", "auto"),
                   vl_device=get("vl_device", "auto"), text_device=get("text_device", "auto"),
                   dtype=get("dtype", "auto"), vl_max_image_tokens=get("vl_max_image_tokens", 1024),
                   vl_auto_unload=get("vl_auto_unload", False), compile=get("compile", False),
                   fp8=get("fp8", False), warm_size=(get("width", 1024), get("height", 1024)))

    # ------------------------------------------------------------------------------------------- devices, dtypes
    def dtype_for(self, device: torch.device) -> torch.dtype:
        """The compute dtype of a component on ``device`` (the ``dtype`` setting; ``auto`` decides per device)."""
        return parse_dtype(self._dtype_setting, device)

    @property
    def text_device(self) -> torch.device:
        """Where the Qwen3 text encoder runs (``auto``: with the DiT)."""
        if self._text_device_setting == "auto":
            return self.dit_device
        return torch.device(self._text_device_setting)

    @property
    def vl_device(self) -> torch.device | None:
        """Where Qwen3-VL runs (``None`` without a VL model); ``auto`` is decided once, on first use."""
        if self.vl_path is None:
            return None
        with self._lock:
            if self._vl_dev is None:
                self._vl_dev = resolve_vl_device(self._vl_device_setting, self.dit_device,
                                                 _weights_bytes(self.vl_path))
            return self._vl_dev

    @property
    def text_max_length(self) -> int:
        """The text encoder's token budget, read without creating the encoder."""
        with self._lock:
            encoder = self._text
        return int(encoder.max_sequence_length) if encoder is not None else MAX_SEQUENCE_LENGTH

    # ------------------------------------------------------------------------------------------- components
    @property
    def text_encoder(self) -> TextEncoder:
        """The Qwen3 text encoder (created lazily; its weights load on first encode)."""
        with self._lock:
            if self._text is None:
                dev = self.text_device
                self._text = TextEncoder.from_pretrained(self.zimage_path, dev, self.dtype_for(dev), lazy=True)
            return self._text

    @property
    def vl_extractor(self) -> VLExtractor:
        """The Qwen3-VL extractor (created lazily). ``ValueError`` when no ``vl_path`` is configured."""
        if self.vl_path is None:
            raise ValueError("reference images need a Qwen3-VL model: vl_path is not set")
        with self._lock:
            if self._vl is None:
                dev = self.vl_device
                self._vl = VLExtractor.from_pretrained(
                    self.vl_path, dev, self.dtype_for(dev), max_image_tokens=self.vl_max_image_tokens,
                    auto_unload=self.vl_auto_unload, lazy=True)
            return self._vl

    @property
    def generator(self) -> Generator:
        """The Z-Image DiT + VAE (created lazily; weights load on first use)."""
        with self._lock:
            if self._gen is None:
                dev = self.dit_device
                self._gen = Generator.from_pretrained(self.zimage_path, dev, self.dtype_for(dev), lazy=True,
                                                      on_build=self._accelerate if self.compile or self.fp8 else None)
            return self._gen

    def _accelerate(self, generator: Generator) -> dict[str, Any]:
        """FP8 and/or regional compile of a freshly built DiT, then its warm-up (``engine.generation.accel.prepare``)."""
        from engine.generation import accel  # torch.compile machinery: imported only when acceleration is on

        width, height = self.warm_size
        report = accel.prepare(generator, compile=self.compile, fp8=self.fp8, width=width, height=height)
        log.info("DiT acceleration: %s", {k: v for k, v in report.items() if k != "warm_up"})
        return report

    def provide(self, component: str, instance: TextEncoder | VLExtractor | Generator | None) -> None:
        """Use a prebuilt ``text`` | ``vl`` | ``dit`` component (benchmarks build their own); ``None`` drops it, so
        the next use creates it from the folder again."""
        attributes = {"text": "_text", "vl": "_vl", "dit": "_gen"}
        if component not in attributes:
            raise ValueError(f"component must be one of {', '.join(attributes)}; got {component!r}")
        with self._lock:
            setattr(self, attributes[component], instance)

    def _created(self) -> dict[str, TextEncoder | VLExtractor | Generator]:
        """The components created so far, by name (none is created here)."""
        with self._lock:
            made = {"text": self._text, "dit": self._gen, "vl": self._vl}
        return {name: component for name, component in made.items() if component is not None}

    def _names(self, component: str) -> list[str]:
        name = str(component).strip().lower()
        if name not in COMPONENTS:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)}; got {component!r}")
        if name == "all":
            return ["text", "dit"] + (["vl"] if self.vl_path is not None else [])
        return [name]

    def load(self, component: str = "all") -> None:
        """Load ``vl`` | ``text`` | ``dit`` | ``all`` now (otherwise each loads on first use)."""
        getters = {"text": lambda: self.text_encoder, "dit": lambda: self.generator, "vl": lambda: self.vl_extractor}
        for name in self._names(component):
            getters[name]().load()

    def unload(self, component: str = "all") -> None:
        """Free ``vl`` | ``text`` | ``dit`` | ``all``; each reloads lazily when next needed."""
        created = self._created()
        for name in self._names(component):
            if name in created:
                created[name].unload()

    def loaded_components(self) -> dict[str, str]:
        """``{component: device}`` for the components whose weights are in memory now."""
        return {name: str(c.device) for name, c in self._created().items() if c.loaded}

    # ------------------------------------------------------------------------------------------- reference stats
    def reference_stats_key(self, layer: int = -2) -> str:
        """The cache key of the text encoder's statistics at ``layer`` (creates the encoder, loads no weights)."""
        return self.text_encoder.stats_key(check_layer(layer, self.text_layers, "text_layer"))

    def reference_stats(self, layer: int = -2) -> ReferenceStats:
        """Per-dimension mean/std of the text encoder's ``layer`` output: memoised, else computed (a cache seeds the
        memo beforehand through :meth:`seed_reference_stats`)."""
        layer = check_layer(layer, self.text_layers, "text_layer")
        encoder = self.text_encoder
        key = encoder.stats_key(layer)
        with self._lock:
            hit = self._stats.get(key)
        if hit is not None:
            return hit

        stats = encoder.reference_stats(layer)
        with self._lock:
            return self._stats.setdefault(key, stats)  # a racing thread's equal value wins: one object per key

    def seed_reference_stats(self, key: str, stats: ReferenceStats) -> None:
        """Memoise statistics kept elsewhere (an embedding cache) under ``key``; ``ValueError`` when they are not
        the statistics of ``key`` or not one ``[D]`` mean and std."""
        if not isinstance(stats, ReferenceStats):
            raise ValueError(f"stats must be ReferenceStats; got {type(stats).__name__}")
        if stats.key != key:
            raise ValueError(f"stats are those of key {stats.key[:12]}, not of {str(key)[:12]}")
        if stats.mean.ndim != 1 or stats.mean.shape != stats.std.shape:
            raise ValueError(f"stats must hold one [D] mean and std; got {tuple(stats.mean.shape)} and "
                             f"{tuple(stats.std.shape)}")
        with self._lock:
            self._stats.setdefault(key, stats)
