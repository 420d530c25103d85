"""The references of ``stylize`` and ``sweep``: repeatable ``-i`` and ``--style`` (up to 4 in all), ``--weights``,
``--negative-image`` / ``--negative-style``; every problem one usage line naming the flag, before any model loads.

Order: the ``-i`` files as given, then the ``--style`` codes as given; ``--weights`` follow that order (missing ones
are 1). A code may carry its weight (``CODE::2``) instead, when ``--weights`` is not given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.cli._common import load_reference, reference_record
from engine.cli._errors import UsageError
from engine.multiref import MAX_REFERENCES, normalized_weights, parse_weights, with_negative, with_references
from engine.styles import LocalStyles, StyleRef, parse_style, single_reference_weight
from engine.types import StylizeRequest

__all__ = ["CliReferences", "gather_references", "local_styles"]


def local_styles(settings: Any) -> LocalStyles:
    """The CLI's own style codes, under the data folder (``--data-dir`` / ``ZVL_DATA_DIR``)."""
    return LocalStyles(Path(settings.data_dir) / "styles")


@dataclass
class CliReferences:
    """The references a command line names, loaded and sanitised."""

    paths: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    weights: tuple[float, ...] = ()
    negative_path: str | None = None
    negative: Any = None

    def apply(self, request: StylizeRequest) -> StylizeRequest:
        """``request`` with these references, weights and negative (CFG on for a negative, see
        ``engine.multiref.with_negative``)."""
        return with_negative(with_references(request, self.images, self.weights), self.negative)

    def records(self) -> dict[str, Any]:
        """``references`` (each file's path, sha256, size and normalised weight) and ``negative_reference``."""
        weights = normalized_weights(self.weights, len(self.images)) if self.images else []
        return {"references": [{**reference_record(p, im), "weight": round(w, 6)}
                               for p, im, w in zip(self.paths, self.images, weights)],
                "negative_reference": reference_record(self.negative_path, self.negative)
                if self.negative_path is not None else None}


def _parse_code(text: str, option: str) -> StyleRef:
    try:
        return parse_style(text, option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _code_path(ref: StyleRef, option: str, styles: LocalStyles) -> str:
    try:
        return str(styles.path_of(ref, option))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def gather_references(args: argparse.Namespace, settings: Any) -> CliReferences:
    """``-i``/``--style``/``--weights``/``--negative-*`` checked and loaded (usage errors naming the flag)."""
    images, codes = list(args.image or []), list(getattr(args, "style", None) or [])
    count = len(images) + len(codes)
    negative_image, negative_style = getattr(args, "negative_image", None), getattr(args, "negative_style", None)
    if count == 0 and negative_image is None and negative_style is None:
        raise UsageError("give a reference: -i REF or --style CODE (repeat either for several, up to "
                         f"{MAX_REFERENCES})")
    if count > MAX_REFERENCES:
        raise UsageError(f"-i/--style: at most {MAX_REFERENCES} references in one request; got {count}")
    styles, refs = local_styles(settings), [_parse_code(text, "--style") for text in codes]
    negative_ref = _parse_code(negative_style, "--negative-style") if negative_style is not None else None
    weights = _weights(args, len(images), refs)
    paths = images + [_code_path(ref, "--style", styles) for ref in refs]
    out = CliReferences(paths=paths, images=[load_reference(p, settings) for p in paths], weights=weights)
    if negative_ref is not None:
        negative_image = _code_path(negative_ref, "--negative-style", styles)
    if negative_image is not None:
        out.negative_path, out.negative = negative_image, load_reference(negative_image, settings)
    return out


def _weights(args: argparse.Namespace, files: int, codes: list[StyleRef]) -> tuple[float, ...]:
    given = getattr(args, "weights", None)
    coded = any(ref.weight != 1.0 for ref in codes)
    if given is not None and coded:
        raise UsageError("--weights: give the weights either with --weights or as --style CODE::W, not both")
    try:
        if coded and files + len(codes) == 1:
            single_reference_weight(codes[0], "--style")
        if given is not None:
            return parse_weights(list(given), files + len(codes), "--weights")
        if coded:
            return tuple([1.0] * files + [ref.weight for ref in codes])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return ()
