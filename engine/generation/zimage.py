"""Z-Image generation from precomputed caption embeddings: a thin, checked layer over diffusers' pipelines.

:class:`Generator` wraps ``ZImagePipeline`` (txt2img) and ``ZImageImg2ImgPipeline`` (img2img), built once from the
same transformer, VAE and scheduler modules (nothing is loaded twice). It takes caption embeddings (``[L, D]`` per
image, as ``prompt_embeds``), never prompts: the text encoder belongs to :class:`engine.conditioning.text.TextEncoder`, so it can
live on another device or be unloaded independently of the DiT.

What it fixes or pins relative to the seed (seed-behaviour §5, §6):

* **Shift.** The scheduler's shift is set from the request on every call (default 3.0, Z-Image-Turbo's value). The
  seed's experiment runner passed none and its own pipeline then used the resolution-dependent ``mu`` as the shift:
  ≈1.15 at 1024², so all its "4 steps beat 9" results ran at the wrong schedule. A scheduler config with
  ``use_dynamic_shifting=True`` is rebuilt with it off, so the requested shift is the one used.
* **Caption limit.** Every caption goes through :func:`engine.conditioning.sequence.fit_caption` (≤ 1504 rows; longer ones
  crash the DiT's RoPE lookup).
* **Seeds.** One CPU ``torch.Generator`` per image, seeded with that image's seed: a batch with seeds ``(a, b)``
  starts from exactly the noise of two single runs with ``a`` and ``b`` and gives the same images up to float32
  reordering (other batch shapes may take other kernels; pixels can differ by a level or two, never by content),
  and seeds are portable across devices.
* **img2img determinism.** diffusers 0.42.1 ``ZImageImg2ImgPipeline.prepare_latents`` samples the VAE latent with
  ``retrieve_latents(vae.encode(image[i]), generator=generator[i])`` when given one generator per image, so passing
  the per-image generators and one copy of the reference per image makes img2img fully deterministic (the seed's
  pipeline sampled the latent without its generator). The reference is centre-cropped to the requested aspect
  ratio and LANCZOS-resized to ``width x height``.
* **CFG.** ``guidance_scale > 0`` (note: > 0, so 1.0 already runs CFG) needs a negative caption; the caller encodes
  it (``StylePipeline.negative_embedding``: the empty prompt ``""``, as the diffusers pipeline's own default).

Progress and cancel: ``progress(step, total)`` is called after each denoising step (``total`` = the steps actually
run: ``steps``, for img2img too, which starts at noise level ``strength``: see :func:`img2img_sigmas`); ``should_abort()`` is polled before the first
step, after each step and before decoding, and a ``True`` stops the loop (``pipe._interrupt = True``) and raises
:class:`Cancelled`. Denoising runs with ``output_type="latent"`` and the VAE decode runs here (the pipeline's exact
decode), so the two are timed separately.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from engine.conditioning.sequence import fit_caption
from engine.generation.stepped import StepCaptions, StepPlan
from engine.models.loading import free_memory, model_loading, parse_dtype, resolve_device
from engine.types import MAX_CAPTION_LEN, FitMode

log = logging.getLogger(__name__)

#: The Z-Image-Turbo schedule: 9 steps, shift 3.0, no CFG.
DEFAULT_STEPS = 9
DEFAULT_SHIFT = 3.0

ProgressFn = Callable[[int, int], Any]
AbortFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised when ``should_abort()`` asked a generation to stop."""


def img2img_sigmas(steps: int, strength: float, shift: float) -> list[float]:
    """The pre-shift schedule that makes img2img start at noise level ``strength`` and run all ``steps`` steps.

    ``strength`` is the *starting noise level*: the start latent is ``(1 - s) * reference + s * noise`` (flow
    matching), so every ``s < 1`` keeps the reference's share ``1 - s`` whatever the step count. diffusers' own rule
    (``t_start = int(steps - steps * s)``) starts every strength above ``(steps - 1) / steps`` at sigma 1.0, pure
    noise: at 9 steps and the seed's 0.9 two references gave identical images (audit #28). Here the pipeline gets
    ``strength=1.0`` (no steps skipped) and this schedule: the default ``linspace(1, 1/n, n)`` scaled by ``u0``, the
    pre-shift value whose shifted sigma is ``s`` (the scheduler maps ``u -> shift*u / (1 + (shift-1)*u)``, whose
    inverse is ``u = s / (shift - (shift-1)*s)``). ``s == 1`` gives exactly the default schedule.
    """
    s, sh, n = float(strength), float(shift), int(steps)
    u0 = s / (sh - (sh - 1.0) * s)
    return [u0 * (1.0 - k / n) for k in range(n)]


def prepare_init_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB, centre-cropped to ``width:height`` and LANCZOS-resized to exactly ``width x height``."""
    img = image if image.mode == "RGB" else image.convert("RGB")
    if img.size == (width, height):
        return img
    return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


@dataclass
class Denoised:
    """What :meth:`Generator.denoise` returns: float32 latents ``[B, 16, H/8, W/8]``, parameters, seconds."""

    latents: torch.Tensor
    params: dict[str, Any]
    seconds: float


class Generator:
    """Z-Image txt2img / img2img over shared modules. Build with :meth:`from_pretrained`."""

    def __init__(self, transformer, vae, scheduler, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None, path: str | Path | None = None,
                 on_build: Callable[[Generator], Any] | None = None):
        self.path = Path(path) if path is not None else None
        #: Called with this Generator each time its modules are (re)built, e.g. ``engine.generation.accel.prepare`` for the
        #: compile / FP8 settings, so an unload + reload keeps them. Its return value lands in ``build_report``.
        self.on_build = on_build
        self.build_report: Any = None
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype, self.device) if dtype is not None else transformer.dtype
        self._lock = threading.RLock()
        self._pipe = None
        self._img2img = None
        self._cap_dim: int | None = None
        if transformer is not None:
            self._build(transformer, vae, scheduler)

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, zimage_dir: str | Path, device: str | torch.device = "auto",
                        dtype: torch.dtype | str | None = "auto", *,
                        lazy: bool = False, on_build: Callable[[Generator], Any] | None = None) -> Generator:
        """Load ``transformer/``, ``vae/`` and ``scheduler/`` of a diffusers Z-Image folder.

        ``lazy=True`` loads on first use. ``on_build``: see :attr:`on_build`.
        """
        dev = resolve_device(device)
        dt = parse_dtype(dtype, dev)
        gen = cls(None, None, None, device=dev, dtype=dt, path=zimage_dir, on_build=on_build)
        if not lazy:
            gen.load()
        return gen

    def load(self) -> None:
        with self._lock:
            if self._pipe is not None:
                return
            if self.path is None:
                raise RuntimeError("this Generator was built from modules and cannot reload them")
            from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

            log.info("loading Z-Image DiT + VAE from %s on %s (%s)", self.path, self.device, self.dtype)
            with model_loading():
                transformer = ZImageTransformer2DModel.from_pretrained(str(self.path), subfolder="transformer",
                                                                       dtype=self.dtype, local_files_only=True)
                vae = AutoencoderKL.from_pretrained(str(self.path), subfolder="vae", dtype=self.dtype,
                                                    local_files_only=True)
                scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(self.path), subfolder="scheduler",
                                                                            local_files_only=True)
            self._build(transformer.to(self.device).eval(), vae.to(self.device).eval(), scheduler)

    def _build(self, transformer, vae, scheduler) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline, ZImagePipeline

        if getattr(scheduler.config, "use_dynamic_shifting", False):
            # with dynamic shifting the scheduler ignores its shift and uses the resolution-dependent mu (the seed's
            # silent ~1.15); rebuild it static so the requested shift is what runs
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, use_dynamic_shifting=False)
        pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                              transformer=transformer)
        img2img = ZImageImg2ImgPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                        transformer=transformer)
        for p in (pipe, img2img):
            p.set_progress_bar_config(disable=True)
        self._pipe, self._img2img = pipe, img2img
        self._cap_dim = int(transformer.config.cap_feat_dim)
        if self.on_build is not None:
            self.build_report = self.on_build(self)

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def unload(self) -> None:
        """Free the DiT and VAE (the next call reloads them from the folder). The text encoder is not touched."""
        with self._lock:
            if self._pipe is None:
                return
            if self.path is None:
                raise RuntimeError("this Generator was built from modules and cannot reload them; keep it loaded")
            self._pipe = None
            self._img2img = None
            free_memory()

    @property
    def pipe(self):
        """The txt2img ``ZImagePipeline`` (loads the modules first if needed)."""
        self.load()
        return self._pipe

    @property
    def img2img_pipe(self):
        """The ``ZImageImg2ImgPipeline`` sharing :attr:`pipe`'s modules."""
        self.load()
        return self._img2img

    @property
    def caption_dim(self) -> int:
        self.load()
        return int(self._cap_dim)

    # ------------------------------------------------------------------------------------------- helpers
    def _captions(self, embeds: Any, n: int, fit_mode: FitMode, name: str) -> list[torch.Tensor]:
        if isinstance(embeds, torch.Tensor):
            embeds = [embeds] if embeds.dim() == 2 else list(embeds)
        try:
            items = list(embeds)
        except TypeError:
            raise ValueError(f"{name} must be a [L, D] tensor or a list of them; got {type(embeds).__name__}") from None
        if len(items) == 1 and n > 1:
            items = items * n
        if len(items) != n:
            raise ValueError(f"{name} must hold one caption or one per seed ({n}); got {len(items)}")
        out = []
        for e in items:
            if not isinstance(e, torch.Tensor) or e.dim() != 2 or e.shape[0] < 1 or not e.is_floating_point():
                raise ValueError(f"{name} must be non-empty 2-D [L, D] float tensors; got "
                                 f"{getattr(e, 'shape', type(e).__name__)}")
            if e.shape[1] != self.caption_dim:
                raise ValueError(f"{name} must have D = {self.caption_dim} (the DiT's cap_feat_dim); "
                                 f"got {tuple(e.shape)}")
            if not bool(torch.isfinite(e).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
            e = fit_caption(e.float(), MAX_CAPTION_LEN, fit_mode)
            out.append(e.to(device=self.device, dtype=self.pipe.transformer.dtype))
        return out

    def _step_plan(self, captions: list[torch.Tensor], step_captions: Sequence[StepCaptions | None] | None,
                   fit: FitMode) -> tuple[list[torch.Tensor], StepPlan | None]:
        """Step 0's captions and the plan of the later steps (``None``: ``captions`` throughout)."""
        if not step_captions or all(c is None for c in step_captions):
            return captions, None
        plan = StepPlan(step_captions, captions, lambda e: self._captions(e, 1, fit, "step_captions")[0])
        return plan.at(0), plan

    # ------------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def denoise(self, prompt_embeds: torch.Tensor | Sequence[torch.Tensor], *, seeds: Sequence[int] | int = (0,),
                steps: int = DEFAULT_STEPS, guidance_scale: float = 0.0, shift: float = DEFAULT_SHIFT,
                width: int = 1024, height: int = 1024, image: Image.Image | Sequence[Image.Image] | None = None,
                strength: float | None = None,
                negative_prompt_embeds: torch.Tensor | Sequence[torch.Tensor] | None = None,
                fit_mode: FitMode | str = FitMode.POOL, progress: ProgressFn | None = None,
                should_abort: AbortFn | None = None, step_captions: Sequence[StepCaptions | None] | None = None
                ) -> Denoised:
        """The denoising loop → final latents (float32) and the parameter record (settings checked before by
        ``engine.generation.checks``; this checks the embeddings). ``prompt_embeds`` / ``negative_prompt_embeds`` (CFG):
        one ``[L, D]`` for every seed, or one per seed; ``image`` + ``strength``: img2img; ``step_captions``: one per
        image (``None``: ``prompt_embeds`` throughout, ``generation.stepped``). Raises :class:`Cancelled` on abort."""
        seeds = [int(seeds)] if isinstance(seeds, int) else [int(s) for s in seeds]
        fit, guidance, n = FitMode.parse(fit_mode, "fit_mode"), float(guidance_scale), len(seeds)
        images = _per_seed_images(image, n)
        total = int(steps)  # img2img runs every step too, from the start noise level `strength`
        with self._lock:
            captions, plan = self._step_plan(self._captions(prompt_embeds, n, fit, "prompt_embeds"), step_captions, fit)
            negatives = None
            if guidance > 0:
                if negative_prompt_embeds is None:
                    raise ValueError("guidance_scale > 0 needs negative_prompt_embeds (CFG's negative caption)")
                negatives = self._captions(negative_prompt_embeds, n, fit, "negative_prompt_embeds")
            pipe = self.img2img_pipe if images is not None else self.pipe
            pipe.scheduler.set_shift(float(shift))  # every call: the request's shift, never a leftover or mu
            if should_abort is not None and should_abort():
                raise Cancelled("cancelled before the first step")
            call = dict(prompt_embeds=captions, negative_prompt_embeds=negatives, height=int(height),
                        width=int(width), num_inference_steps=int(steps), guidance_scale=guidance,
                        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="latent",
                        callback_on_step_end=_step_callback(total, progress, should_abort, plan))
            if images is not None:  # one image per seed: diffusers then samples image i's VAE latent with generator i
                inits = {id(im): prepare_init_image(im, int(width), int(height)) for im in images}
                call.update(image=[inits[id(im)] for im in images], strength=1.0,
                            sigmas=img2img_sigmas(int(steps), float(strength), float(shift)))
            t0 = time.perf_counter()
            latents = pipe(**call).images
            seconds = time.perf_counter() - t0
            return Denoised(latents, self._record(pipe, call, images, total, fit, negatives, strength), seconds)

    def _record(self, pipe: Any, call: dict[str, Any], images: list[Image.Image] | None, total: int,
                fit: FitMode, negatives: list[torch.Tensor] | None, strength: float | None) -> dict[str, Any]:
        """The parameter record of one denoising call (``Denoised.params``)."""
        init_size = None
        if images is not None:
            sizes = [list(im.size) for im in images]
            init_size = sizes[0] if all(sz == sizes[0] for sz in sizes) else sizes
        return {
            "shift": float(pipe.scheduler.shift), "steps": call["num_inference_steps"], "denoise_steps": total,
            "guidance_scale": call["guidance_scale"], "cfg": call["guidance_scale"] > 0,
            "seeds": [int(g.initial_seed()) for g in call["generator"]], "width": call["width"],
            "height": call["height"], "strength": float(strength) if images is not None else None,
            "mode": "img2img" if images is not None else "txt2img", "init_image_size": init_size,
            "caption_lengths": [int(c.shape[0]) for c in call["prompt_embeds"]],
            "negative_lengths": [int(c.shape[0]) for c in negatives] if negatives else None,
            "fit_mode": fit.value, "sigmas": [round(float(s), 6) for s in pipe.scheduler.sigmas.tolist()],
            "start_sigma": round(float(pipe.scheduler.sigmas[0]), 6),  # the noise level the loop started from
            "dtype": str(pipe.transformer.dtype).replace("torch.", ""), "device": str(self.device),
        }

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """The pipeline's own decode: ``latents / scaling_factor + shift_factor`` → VAE → RGB PIL images.

        Decodes one image at a time: a batched VAE decode gives slightly different pixels (±1-3 levels measured on
        the tiny model) than a single one, and one at a time also bounds peak memory at large sizes; the VAE is a
        small part of the time (0.09 s per 1024² image on an H200 vs 1.4 s denoising).
        """
        with self._lock:
            pipe = self.pipe
            vae = pipe.vae
            images: list[Image.Image] = []
            for i in range(latents.shape[0]):
                x = latents[i:i + 1].to(device=self.device, dtype=vae.dtype)
                x = x / vae.config.scaling_factor + vae.config.shift_factor
                decoded = vae.decode(x, return_dict=False)[0]
                images.extend(pipe.image_processor.postprocess(decoded, output_type="pil"))
            return images


def _per_seed_images(image: Image.Image | Sequence[Image.Image] | None, n: int) -> list[Image.Image] | None:
    """img2img's starting image, one per seed (``None`` for txt2img)."""
    if image is None:
        return None
    images = [image] if isinstance(image, Image.Image) else list(image)
    images = images * n if len(images) == 1 else images
    if len(images) != n or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError(f"image must be a PIL image or one PIL image per seed ({n})")
    return images


def _step_callback(total: int, progress: ProgressFn | None, should_abort: AbortFn | None,
                   plan: StepPlan | None = None) -> Callable:
    """diffusers' ``callback_on_step_end``: report progress, stop the loop when ``should_abort()`` says so, and hand
    the pipeline the next step's captions when a ``plan`` (``style_schedule``) changes them."""

    def on_step(pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if progress is not None:
            progress(i + 1, total)
        if should_abort is not None and should_abort():
            pipe._interrupt = True  # diffusers' own interrupt flag, the documented way to stop its loop
            raise Cancelled(f"cancelled after step {i + 1} of {total}")
        if plan is not None and i + 1 < total:
            return {**kwargs, "prompt_embeds": plan.at(i + 1)}  # diffusers reads it back as the next captions
        return kwargs

    return on_step
