"""The one fake pipeline of the test suite: ``engine.serving.protocols.PipelineLike`` without models.

It serves both the worker's tests (stages that record their order, block on events and fail on demand) and the
bot's (a solid colour per (seed, alpha, mode), or noise; a ``gate`` that holds every step).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

import torch
from PIL import Image

from engine.conditioning.text import ReferenceStats
from engine.generation.zimage import Cancelled
from engine.types import Encoded, PositionKind, StylizeRequest, StylizeResult, VLResult

WAIT = 10.0  #: generous bound for "this happens"; tests never wait it out when they pass


def reference_stats(key: str, value: float = 1.0) -> ReferenceStats:
    """Small reference statistics stored under ``key``."""
    return ReferenceStats(mean=torch.full((8,), value), std=torch.full((8,), 2 * value), layer=-2, num_prompts=10,
                          num_tokens=40, key=key, global_mean=value, global_std=2 * value)


class FakePipeline:
    """Stages record ``(what, label)`` in ``log`` (label = the prompt); ``block[(stage, label)]`` is an Event the stage
    waits for, ``fail[(stage, label)]`` an exception it raises, ``entered[(stage, label)]`` is set when it starts
    (stage ``vl`` or ``dit``). ``gate``: every DiT step waits for it (polling ``should_abort``); ``fail``: raise it in
    every generate; ``step_s``/``vl_s``: seconds per DiT step / per extraction; ``load_error[component]``: raised by
    ``load``; ``stats_key``: what ``reference_stats_key`` answers (``None``: no statistics needed).
    """

    vl_device = "cpu"

    def __init__(self, *, gate: threading.Event | None = None, noise: bool = False, fail: Exception | None = None,
                 max_layer: int = 8, step_s: float = 0.0, vl_s: float = 0.0, stats_key: str | None = None) -> None:
        self.gate, self.noise, self.fail_all, self.max_layer = gate, noise, fail, max_layer
        self.step_s, self.vl_s, self.stats_key = step_s, vl_s, stats_key
        self.log: list[tuple[str, str]] = []
        self.loaded = {"vl": False, "text": False, "dit": False}
        self.block: dict[tuple[str, str], threading.Event] = {}
        self.fail: dict[tuple[str, str], BaseException] = {}
        self.load_error: dict[str, BaseException] = {}
        self.entered: dict[tuple[str, str], threading.Event] = {}
        self.aborted: list[str] = []
        self.requests: list[StylizeRequest] = []
        self.encoded: list[Encoded] = []
        self.threads: dict[str, set[str]] = {"vl": set(), "dit": set()}
        self.negatives_made: set[tuple[int, bool]] = set()
        self.stats_computed: list[str] = []
        self.seeded: dict[str, ReferenceStats] = {}
        self._lock = threading.Lock()

    def _rec(self, what: str, label: str) -> None:
        with self._lock:
            self.log.append((what, label))

    def _stage(self, stage: str, label: str) -> None:
        self.entered.setdefault((stage, label), threading.Event()).set()
        if (stage, label) in self.block:
            assert self.block[(stage, label)].wait(WAIT), f"{stage}:{label} was never released"
        if (stage, label) in self.fail:
            raise self.fail[(stage, label)]

    def check_inputs(self, request: StylizeRequest) -> None:
        """``bad…`` prompts and layers beyond ``max_layer`` are refused, naming the parameter."""
        if request.prompt.startswith("bad"):
            raise ValueError("alpha must be between 0 and 1; got 1.7")
        layers = [request.hidden_layer] if isinstance(request.hidden_layer, int) else \
            [lw.layer for lw in request.hidden_layer]
        if any(-layer > self.max_layer for layer in layers):
            raise ValueError(f"hidden_layer {layers[0]} is beyond the VL model's {self.max_layer} layers")

    def needs_reference(self, request: StylizeRequest) -> bool:
        """Any request with a reference."""
        return request.reference is not None

    def reference_stats_key(self, request: StylizeRequest) -> str | None:
        """``stats_key`` for every request."""
        return self.stats_key

    def reference_stats_for(self, request: StylizeRequest) -> ReferenceStats:
        """Statistics under ``stats_key`` (seeded ones, or "computed": recorded in ``stats_computed``)."""
        assert self.stats_key is not None
        if self.stats_key not in self.seeded:
            self.stats_computed.append(self.stats_key)
            self.seeded[self.stats_key] = reference_stats(self.stats_key, 1.5)
        return self.seeded[self.stats_key]

    def seed_reference_stats(self, key: str, stats: ReferenceStats) -> None:
        """Keep ``stats`` as the memo of ``key``."""
        self.seeded[key] = stats

    def encode_reference(self, request: StylizeRequest) -> VLResult | None:
        """A 4-token extraction (``None`` without a reference); decodes the reference as the processor would."""
        if request.reference is None:
            return None
        label = request.prompt
        self.threads["vl"].add(threading.current_thread().name)
        assert self.loaded["vl"], "VL used before it was loaded"
        self._rec("vl_start", label)
        self._stage("vl", label)
        if self.vl_s:
            time.sleep(self.vl_s)
        request.reference.load()  # a truncated image raises here, as in the real processor
        self._rec("vl_end", label)
        return VLResult(torch.zeros(4, 8), [PositionKind.IMAGE.value] * 4, (0, 4), 1.0, 1.0, 1.0)

    def neutral_reference(self, request: StylizeRequest) -> VLResult:
        """style_delta's neutral extraction."""
        self._rec("neutral", request.prompt)
        return VLResult(torch.zeros(4, 8), [PositionKind.IMAGE.value] * 4, (0, 4), 1.0, 1.0, 1.0)

    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor:
        """A zero embedding."""
        self._rec("text", request.prompt)
        return torch.zeros(3, 8)

    def has_negative(self, request: StylizeRequest) -> bool:
        """Whether CFG's negative for the request was made already (memoised, as the pipeline does)."""
        return (request.text_layer, request.think) in self.negatives_made

    def negative_embedding(self, request: StylizeRequest) -> torch.Tensor:
        """CFG's negative."""
        self.negatives_made.add((request.text_layer, request.think))
        return torch.zeros(2, 8)

    def generate(self, request: StylizeRequest, vl: Any, text_emb: Any = None, *, neutral: Any = None,
                 progress=None, should_abort=None) -> StylizeResult:
        """One image per seed, after ``request.steps`` steps (each reported, each checking ``should_abort``)."""
        label = request.prompt
        self.requests.append(request)
        if isinstance(vl, Encoded):  # several references or a negative: the worker hands over all extractions
            self.encoded.append(vl)
            vl, text_emb = vl.vl, vl.prompt_embeds
        self.threads["dit"].add(threading.current_thread().name)
        assert self.loaded["dit"], "DiT used before it was loaded"
        assert text_emb is not None
        if self.fail_all is not None:
            raise self.fail_all
        self._rec("dit_start", label)
        self._stage("dit", label)
        for step in range(1, request.steps + 1):
            self._step(label, should_abort)
            if progress is not None:
                progress(step, request.steps)
        self._rec("dit_end", label)
        params = {**request.record(), "prompt": label, "alpha": request.alpha}
        return StylizeResult([self._image(request, seed) for seed in request.seeds], list(request.seeds), params,
                             vl=None if vl is None else vl.metadata(), timings={"total": 0.01})

    def _step(self, label: str, should_abort) -> None:
        def abort_now() -> None:
            if should_abort is not None and should_abort():
                self.aborted.append(label)
                self._rec("dit_abort", label)
                raise Cancelled(label)

        abort_now()
        while self.gate is not None and not self.gate.wait(0.02):
            abort_now()
        if self.step_s:
            time.sleep(self.step_s)

    def _image(self, request: StylizeRequest, seed: int) -> Image.Image:
        size = (request.width, request.height)
        if self.noise:
            return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
        digest = hashlib.sha256(f"{seed}|{request.alpha}|{request.blend_mode}".encode()).digest()
        return Image.new("RGB", size, tuple(digest[:3]))

    def load(self, component: str) -> None:
        """Load (record) ``component``, or raise ``load_error[component]``."""
        if component in self.load_error:
            raise self.load_error[component]
        self._rec("load", component)
        for name in (self.loaded if component == "all" else [component]):
            self.loaded[name] = True

    def unload(self, component: str) -> None:
        """Unload (record) ``component``."""
        self._rec("unload", component)
        for name in (self.loaded if component == "all" else [component]):
            self.loaded[name] = False

    def loaded_components(self) -> dict[str, Any]:
        """``{component: loaded}``."""
        return dict(self.loaded)


class BatchingFake(FakePipeline):
    """A fake with ``generate_batch`` (recording each batch's prompts)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.batches: list[list[str]] = []

    def generate_batch(self, requests, vls, text_embs, *, progress=None, should_abort=None):
        """The cells one after the other, as one call."""
        self.batches.append([r.prompt for r in requests])
        return [self.generate(r, v, t, progress=progress, should_abort=should_abort)
                for r, v, t in zip(requests, vls, text_embs, strict=True)]
