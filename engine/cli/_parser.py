"""The argparse tree of ``python -m engine``: one builder per command, and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import re

from engine.cli._common import DEFAULT_SEED
from engine.cli._errors import PROG, UsageError
from engine.sweep.presets import PRESETS
from engine.types import (
    AppendSelection,
    BlendMode,
    FitMode,
    Normalization,
    OutlierDirection,
    OutlierMode,
    StyleSchedule,
    TokenMode,
)

__all__ = ["EPILOG", "SWEEP_DESCRIPTION", "build_parser"]

#: Values that start with '-' but are values, not flags: -6, -0.5, -6+-8, -8:-2:2, -6:0.7+-8:0.3
_NEGATIVE_VALUE = re.compile(r"^-\d[\d.:+\-]*$|^-\.\d+$")

SWEEP_DESCRIPTION = """\
Run a sweep: the cross product of the preset's axes (or of the lists you give), plus a pure-text baseline
(alpha 0) per combination of the settings that matter without VL. Writes one PNG per cell (parameters inside),
metadata.json (rewritten atomically after every cell; "complete": true only when every cell succeeded) and
comparison_grid.png.

presets:
""" + "\n".join(f"  {p.name:<18} {p.description}" for p in PRESETS.values())

EPILOG = """\
exit codes: 0 ok; 1 runtime failure (model load, a failed cell, writing output); 2 usage (bad flag or value,
unknown preset, invalid setting, missing model folder, refused reference); 130 interrupted.
settings: flags > ZVL_* environment/.env > --config/--profile TOML > defaults.
"""


class _Parser(argparse.ArgumentParser):
    """Errors become a :class:`UsageError` (one line) instead of usage text + exit; layer mixes like ``-6+-8``
    are values."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        # argparse's own matcher, the one hook for "negative numbers are values"; guarded, as it is private
        if hasattr(self, "_negative_number_matcher"):
            self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str):  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = _Parser(prog=PROG, description="zvl-bot engine: zero-shot style-reference generation with Z-Image.",
                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_make_tiny(sub)
    _add_stylize(sub)
    _add_sweep(sub)
    _add_describe(sub)
    _add_score(sub)
    _add_serve(sub)
    return parser


def _add_describe(sub) -> None:
    de = sub.add_parser("describe", help="prompt suggestions for a reference image (Qwen3-VL)",
                        description="Qwen3-VL writes short prompt suggestions for an image (greedy decoding; "
                                    "noise on the tiny models).", epilog=EPILOG)
    de.add_argument("-i", "--image", required=True, metavar="REF", help="reference image")
    de.add_argument("--n", type=int, default=4, help="how many suggestions (4; at most 8)")
    de.add_argument("--max-new-tokens", type=int, default=48, help="tokens per suggestion (48)")
    de.add_argument("--max-time", type=float, default=60.0, help="stop generating after this many seconds (60)")
    _add_model_args(de)


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="one GPU worker of the shared Redis queue (several GPUs, one bot)",
                        description="Load the models, then serve jobs from the shared queue until SIGTERM or a "
                                    "drain command.", epilog=EPILOG)
    sv.add_argument("--redis-url", metavar="URL", help="the queue's Redis (ZVL_REDIS_URL)")
    sv.add_argument("--name", help="this worker's name in /admin status (default: HOST-PID)")
    sv.add_argument("--pipeline", metavar="MODULE:CALLABLE", help="a stand-in pipeline (benchmarks, tests)")
    _add_model_args(sv)
    dr = sub.add_parser("drain", help="ask one GPU worker to finish its jobs and exit",
                        description="Send a drain command to the worker NAME (as /admin status lists it): it takes "
                                    "no new job, finishes what it holds, leaves and exits 0.", epilog=EPILOG)
    dr.add_argument("worker", metavar="NAME")
    dr.add_argument("--redis-url", metavar="URL", help="the queue's Redis (ZVL_REDIS_URL)")
    dr.add_argument("--config", dest="config_file", metavar="TOML", help="settings file with profiles")
    dr.add_argument("--profile", help="profile of the TOML file")


def _add_make_tiny(sub) -> None:
    tiny = sub.add_parser("make-tiny", help="write tiny random Z-Image and Qwen3-VL folders (for tests and --demo)",
                          description="Write DIR/zimage and DIR/qwen3vl: tiny random models in the real layout.")
    tiny.add_argument("dir", metavar="DIR")
    tiny.add_argument("-q", "--quiet", action="store_true")
    tiny.add_argument("--json", action="store_true")
    tiny.add_argument("--debug", action="store_true")


def _add_stylize(sub) -> None:
    st = sub.add_parser("stylize", help="generate one image in the style of a reference",
                        description="Generate one image; every parameter is stored in the PNG (zvl chunk).",
                        epilog=EPILOG)
    ref = st.add_argument_group("references (up to 4: the -i files, then the --style codes)")
    ref.add_argument("-i", "--image", metavar="REF", action="append",
                     help="reference image; repeat for several (each one's style code is printed)")
    ref.add_argument("--style", metavar="CODE", action="append",
                     help="reuse a reference by the style code an earlier run printed (kept in DATA_DIR/styles); "
                          "repeatable, CODE::W gives it weight W")
    _add_weights(ref)
    neg = ref.add_mutually_exclusive_group()
    neg.add_argument("--negative-image", metavar="NEG",
                     help="a reference the image moves away from (CFG's negative; turns CFG on at 2.0: a second DiT "
                          "pass per step)")
    neg.add_argument("--negative-style", metavar="CODE", help="the negative reference by its style code")
    st.add_argument("-p", "--prompt", required=True, help="text prompt")
    st.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    g = st.add_argument_group("generation")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--alpha", "--vl-alpha", dest="alpha", type=float, help="reference strength 0..1 (0.3)")
    a.add_argument("--style-weight", type=float, help="Midjourney-like style weight 0..1000 (100 = alpha 0.3)")
    g.add_argument("--mode", dest="blend_mode", help=f"blend mode: {_choices(BlendMode)} (pool)")
    g.add_argument("--layer", "--vl-hidden-layer", dest="layer", metavar="LAYER",
                   help="Qwen3-VL hidden layer from the end (-6), or a mix like -6+-8 or -6:0.7+-8:0.3")
    g.add_argument("--tokens", help="VL positions kept: " + _choices(TokenMode) + " (full)")
    g.add_argument("--normalization", help=_choices(Normalization) + " (row_rms)")
    g.add_argument("--outlier-mode", help=_choices(OutlierMode) + " (none)")
    g.add_argument("--append-tokens", type=int, help="pooled image tokens added by mode append (64)")
    g.add_argument("--style-schedule", help="the reference's share over the steps: " + _choices(StyleSchedule)
                   + " (constant)")
    g.add_argument("--append-selection", help="mode append's rows: " + _choices(AppendSelection) + " (pool)")
    g.add_argument("--steps", type=int, help="denoising steps (9)")
    g.add_argument("--strength", type=float, help="img2img from the reference with this strength (0, 1]")
    g.add_argument("--think", action="store_true", default=None, help="add an empty <think> block to the prompt")
    _add_common_generation_args(g)
    _add_model_args(st)


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="run a parameter sweep: one PNG per cell, metadata.json, comparison_grid.png",
                        description=SWEEP_DESCRIPTION, epilog=EPILOG)
    sw.add_argument("-i", "--image", required=True, metavar="REF", action="append",
                    help="reference image; repeat for several (up to 4, with --weights)")
    _add_weights(sw)
    sw.add_argument("-p", "--prompt", required=True, action="append", dest="prompts", metavar="PROMPT",
                    help="text prompt; repeat for several (one subfolder each)")
    sw.add_argument("-o", "--output-dir", metavar="DIR", help="output folder (default ./sweep_<preset>_<time>)")
    sw.add_argument("-s", "--sweep", metavar="PRESET", help="preset: " + ", ".join(PRESETS))
    sw.add_argument("--max-cells", type=int, default=64, help="refuse sweeps with more cells (64)")
    sw.add_argument("--cell-size", type=int, default=256, help="grid thumbnail size in pixels (256)")
    sw.add_argument("--overwrite", action="store_true",
                    help="reuse a folder that holds an earlier sweep (its cell PNGs, metadata.json and grid are "
                         "deleted first)")
    sw.add_argument("--no-score", action="store_true",
                    help="do not score the cells (by default: scores in metadata.json, scores.csv, scores_chart.png)")
    g = sw.add_argument_group("axes (one value fixes the setting, several sweep it; they replace the preset's)")
    _add_sweep_axes(g)
    _add_common_generation_args(g)
    _add_model_args(sw)


def _add_score(sub) -> None:
    sc = sub.add_parser("score", help="score images against a reference (and a prompt)",
                        description="Print each image's scores: colour and texture distance to the reference, "
                                    "clipped share and noise (no model), and with Qwen3-VL (--vl-model-path or "
                                    "--demo) prompt adherence and style similarity, P(yes) of a yes/no question.",
                        epilog=EPILOG)
    sc.add_argument("-r", "--reference", required=True, metavar="REF", help="reference image")
    sc.add_argument("-p", "--prompt", help="the prompt the images were made from (for prompt adherence)")
    sc.add_argument("images", nargs="+", metavar="IMAGE", help="images to score")
    sc.add_argument("--no-judge", action="store_true", help="weight-free scores only (no Qwen3-VL)")
    _add_model_args(sc)


def _add_sweep_axes(g) -> None:
    a = g.add_mutually_exclusive_group()
    a.add_argument("--alphas", "--alpha", "--vl-alpha", dest="alphas", nargs="+", metavar="A",
                   help="alphas, e.g. 0.1 0.3 0.5 or a range 0.1:0.9:0.2")
    a.add_argument("--style-weights", "--style-weight", dest="style_weights", nargs="+", type=float, metavar="SW",
                   help="style weights 0..1000 (converted to alphas)")
    g.add_argument("--layers", "--layer", "--vl-hidden-layer", dest="layers", nargs="+", metavar="L",
                   help="VL layers, e.g. -2 -6 -8 or mixes -6+-8")
    g.add_argument("--modes", "--mode", "--blend-modes", dest="modes", nargs="+", metavar="M",
                   help=_choices(BlendMode))
    g.add_argument("--tokens", "--token-modes", dest="tokens", nargs="+", metavar="T", help=_choices(TokenMode))
    g.add_argument("--normalizations", "--normalization", "--normalization-modes", dest="normalizations",
                   nargs="+", metavar="N", help=_choices(Normalization))
    g.add_argument("--outliers", "--outlier-mode", "--outlier-masking", dest="outliers", nargs="+", metavar="O",
                   help=_choices(OutlierMode))
    g.add_argument("--append-tokens", dest="append_tokens", nargs="+", metavar="K", help="append-mode token counts")
    g.add_argument("--strengths", "--strength", dest="strengths", nargs="+", metavar="S",
                   help="img2img strengths (none = txt2img)")
    g.add_argument("--steps", dest="steps", nargs="+", metavar="N", help="denoising steps")
    g.add_argument("--schedules", "--style-schedule", dest="schedules", nargs="+", metavar="SCHED",
                   help="style schedules: " + _choices(StyleSchedule))
    g.add_argument("--selections", "--append-selection", dest="selections", nargs="+", metavar="SEL",
                   help="append's row selections: " + _choices(AppendSelection))
    g.add_argument("--thinks", "--think", "--think-modes", dest="thinks", nargs="*", metavar="BOOL",
                   help="think block off/on: false true (bare --think = on)")
    g.add_argument("--seeds", dest="seeds", nargs="+", metavar="SEED", help="several seeds as an axis")


def _add_common_generation_args(g) -> None:
    g.add_argument("--target-std", type=float, help="std the global normalisation scales VL states to (61.0)")
    g.add_argument("--outlier-threshold", type=float, help="std-ratio threshold of outlier masking (10)")
    g.add_argument("--outlier-direction", choices=[m.value for m in OutlierDirection],
                   help="which outliers masking looks for (both)")
    g.add_argument("--fit-mode", help="captions over 1504 positions: " + _choices(FitMode))
    g.add_argument("--vl-text", help="text given to Qwen3-VL with the image (default: the prompt)")
    g.add_argument("--text-layer", type=int, help="Qwen3 text-encoder layer (-2, as ZImagePipeline)")
    g.add_argument("--seed", type=int, help=f"seed (default {DEFAULT_SEED})")
    g.add_argument("--width", type=int, help="output width, a multiple of 16 (1024)")
    g.add_argument("--height", type=int, help="output height, a multiple of 16 (1024)")
    g.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float,
                   help="CFG scale (0: off, as Turbo expects; 2.0 with a negative reference)")
    g.add_argument("--shift", type=float, help="scheduler shift (3.0, always passed explicitly)")


def _add_weights(g) -> None:
    g.add_argument("--weights", nargs="+", metavar="W", help="relative weight of each reference, in order "
                                                             "(e.g. --weights 2 1; default equal)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and settings")
    g.add_argument("--config", dest="config_file", metavar="FILE", help="TOML file with named profiles (ZVL_CONFIG)")
    g.add_argument("--profile", metavar="NAME", help="profile (table) of --config to use (default: default)")
    g.add_argument("--model-path", dest="zimage_path", metavar="DIR", help="Z-Image-Turbo diffusers folder")
    g.add_argument("--vl-model-path", dest="vl_path", metavar="DIR", help="Qwen3-VL-4B-Instruct folder")
    g.add_argument("--device", help="DiT device: auto | cpu | cuda[:n]")
    g.add_argument("--vl-device", help="Qwen3-VL device: auto | cpu | cuda[:n]")
    g.add_argument("--text-device", help="Qwen3 text-encoder device: auto | cpu | cuda[:n]")
    g.add_argument("--dtype", help="auto | bfloat16 | float32 | float16")
    g.add_argument("--vl-max-image-tokens", type=int, metavar="N", help="cap on a reference's image tokens")
    g.add_argument("--vl-auto-unload", action="store_true", default=None, help="unload Qwen3-VL after extraction")
    g.add_argument("--data-dir", metavar="DIR", help="data folder (tiny demo models live here)")
    g.add_argument("--demo", action="store_true", default=None,
                   help="tiny random models built into the data folder (images are NOISE)")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (errors are still printed)")
    o.add_argument("--json", action="store_true", help="print the result record as JSON on stdout")
    o.add_argument("--debug", action="store_true", help="show library warnings and tracebacks")


def _choices(enum) -> str:
    return ", ".join(m.value for m in enum)
