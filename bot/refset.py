"""Several references and a negative for ``/stylize``: ``image``, ``image2``–``image4``, ``style:`` codes (several,
space or comma separated, each optionally ``code::weight``), ``weights`` and ``negative_image`` / ``negative_style``.

1. :meth:`ReferenceGatherer.check` (before the defer: every refusal is a private line naming the option): each
   attachment's declared metadata (``bot.references``), each code resolved under the scope rules (``bot.styles``),
   at most ``engine.multiref.MAX_REFERENCES`` in all, the weights parsed;
2. :meth:`ReferenceGatherer.fetch`: each attachment downloaded, decoded and stored by content, each code's stored
   reference loaded; every reference (the negative too) gets its style code;
3. the job's params keep them under ``multi`` (``Extras.record``), so a restart or a Reroll rebuilds the same request
   (:func:`load_extras`). A job with one reference and no negative has no ``multi``: its params are as before.

Order of the references: the attachments as the options go (``image``, ``image2`` …), then the codes as typed;
``weights`` follow that order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.errors import UserError
from bot.references import Reference, ReferenceStore
from bot.store.styles import StyleCode
from bot.styles import StyleBook
from engine.multiref import MAX_REFERENCES, parse_weights, with_negative
from engine.styles import StyleRef, parse_style, single_reference_weight
from engine.types import StylizeRequest

__all__ = ["Extras", "Gathered", "ReferenceGatherer", "load_extras", "references_record"]

ATTACHMENT_OPTIONS = ("image", "image2", "image3", "image4")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass
class _Source:
    """One reference to be: an attachment, or the row of a style code (with the code's ``::weight``)."""

    option: str
    attachment: discord.Attachment | None = None
    row: StyleCode | None = None
    weight: float = 1.0


@dataclass
class Gathered:
    """What :meth:`ReferenceGatherer.check` found: the references in order, their weights, the negative."""

    sources: list[_Source]
    weights: tuple[float, ...] = ()
    negative: _Source | None = None


@dataclass
class Extras:
    """The further references, the weights and the negative of a job (empty: a one-reference job)."""

    more: list[Reference] = field(default_factory=list)
    weights: tuple[float, ...] = ()
    negative: Reference | None = None

    def __bool__(self) -> bool:
        return bool(self.more or self.weights or self.negative)

    def apply(self, request: StylizeRequest) -> StylizeRequest:
        """``request`` (its first reference set) with these; unchanged when empty."""
        if not self:
            return request
        request = request.replace(references=tuple(r.image for r in self.more), weights=self.weights)
        return with_negative(request, self.negative.image if self.negative else None)

    def record(self) -> dict[str, Any]:
        """The ``multi`` entry of a job's params."""
        return {"more": [r.record() for r in self.more], "weights": list(self.weights),
                "negative": self.negative.record() if self.negative else None}


async def load_extras(store: ReferenceStore, params: dict[str, Any]) -> Extras:
    """The stored :class:`Extras` of a job's params (a job from before several references: empty)."""
    multi = params.get("multi") or {}
    more = [await store.load(record) for record in multi.get("more") or []]
    negative = await store.load(multi["negative"]) if multi.get("negative") else None
    return Extras(more, tuple(float(w) for w in multi.get("weights") or ()), negative)


def references_record(params: dict[str, Any]) -> dict[str, Any]:
    """What a result PNG says of a job's further references and negative: stored sha256, size, and weights."""
    multi = params.get("multi") or {}
    if not multi:
        return {}
    first = params.get("reference")
    refs = ([first] if first else []) + list(multi.get("more") or [])
    negative = multi.get("negative")
    return {"references": [{"sha256": r.get("sha256"), "size": r.get("size")} for r in refs],
            "weights": multi.get("weights") or None, "style_codes": params.get("style_codes"),
            "negative_sha256": negative.get("sha256") if negative else None}


class ReferenceGatherer:
    """Checks, fetches and remembers the references of one ``/stylize``."""

    def __init__(self, references: ReferenceStore, styles: StyleBook) -> None:
        self.references, self.styles = references, styles

    async def check(self, interaction: discord.Interaction, attachments: Sequence[discord.Attachment | None],
                    options: Any, negative_image: discord.Attachment | None = None) -> Gathered:
        """Everything that can be refused before the defer (:class:`UserError`, one line naming the option)."""
        where = {"guild_id": interaction.guild_id, "user_id": interaction.user.id}
        sources = [_Source(name, attachment=a) for name, a in zip(ATTACHMENT_OPTIONS, attachments) if a is not None]
        refs = _parse_codes(options.style, "style") if options.style else []
        if len(sources) + len(refs) > MAX_REFERENCES:
            raise UserError(f"Too many references: at most {MAX_REFERENCES} (image, image2–image4 and style: codes "
                            f"together); got {len(sources) + len(refs)}.")
        for source in sources:
            self.references.check_declared(source.attachment)
        if len(sources) + len(refs) == 1 and refs:
            _single_weight(refs[0], "style")
        for ref in refs:
            row = await self.styles.find_ref(ref, option="style", **where)
            sources.append(_Source("style", row=row, weight=ref.weight))
        negative = await self._negative(negative_image, getattr(options, "negative_style", None), where)
        if not sources and negative is None:
            raise UserError("Attach a reference image, or give `style:` a style code (see `/style list`).")
        return Gathered(sources, _weights(options, sources), negative)

    async def _negative(self, attachment: discord.Attachment | None, code: str | None,
                        where: dict[str, Any]) -> _Source | None:
        if attachment is not None and code:
            raise UserError("negative_image: give either negative_image or negative_style, not both.")
        if attachment is not None:
            self.references.check_declared(attachment)
            return _Source("negative_image", attachment=attachment)
        if code:
            (ref,) = _parse_codes(code, "negative_style", single=True)
            _single_weight(ref, "negative_style")
            return _Source("negative_style", row=await self.styles.find_ref(ref, option="negative_style", **where))
        return None

    @staticmethod
    def check_resolved(gathered: Gathered, resolved: dict[str, Any]) -> None:
        """What needs the resolved parameters: a negative blends at the request's style weight, so not at 0."""
        if gathered.negative is not None and float(resolved.get("alpha", 0.0)) <= 0:
            raise UserError(f"{gathered.negative.option}: a negative style needs a style weight above 0 (it is "
                            "blended into the prompt at that weight).")

    async def fetch(self, gathered: Gathered) -> tuple[Reference | None, Extras]:
        """Download or load every reference (after the defer): the first, and the :class:`Extras`."""
        loaded = [await self._load(source) for source in gathered.sources]
        negative = await self._load(gathered.negative) if gathered.negative is not None else None
        first = loaded[0] if loaded else None
        return first, Extras(loaded[1:], gathered.weights, negative)

    async def _load(self, source: _Source) -> Reference:
        if source.attachment is not None:
            return await self.references.fetch(source.attachment)
        assert source.row is not None
        return await self.styles.load(source.row, source.option)

    async def remember(self, first: Reference | None, extras: Extras, *, guild_id: int | None,
                       user_id: int) -> dict[str, Any]:
        """Every reference's style code; the params entries ``style_code`` (what reuses the whole set:
        ``code::weight …`` with several), ``style_codes``, ``negative_style_code`` and ``multi``."""
        refs = ([first] if first else []) + extras.more
        codes = [await self.styles.remember(r, guild_id=guild_id, user_id=user_id) for r in refs]
        out: dict[str, Any] = {"style_code": codes[0] if codes else None}
        if not extras:
            return out
        negative = extras.negative
        weights = list(extras.weights) or [1.0] * len(refs)
        reuse = [f"{c}::{w:g}" if len(refs) > 1 and extras.weights else c for c, w in zip(codes, weights) if c]
        out.update(style_code=" ".join(reuse) or None, style_codes=codes, multi=extras.record(),
                   negative_style_code=await self.styles.remember(negative, guild_id=guild_id, user_id=user_id)
                   if negative else None)
        return out


def _parse_codes(text: str, option: str, single: bool = False) -> list[StyleRef]:
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if single and len(parts) != 1:
        raise UserError(f"{option}: give one style code (e.g. ab12cd34).")
    try:
        return [parse_style(p, option) for p in parts] or [parse_style(text, option)]
    except ValueError as exc:
        raise UserError(_sentence(str(exc))) from None


def _single_weight(ref: StyleRef, option: str) -> None:
    try:
        single_reference_weight(ref, option)
    except ValueError as exc:
        raise UserError(_sentence(str(exc))) from None


def _weights(options: Any, sources: list[_Source]) -> tuple[float, ...]:
    """``weights:`` or the codes' ``::w`` (not both); ``()`` for equal weights."""
    text = getattr(options, "weights", None)
    coded = any(s.weight != 1.0 for s in sources)
    if text and coded:
        raise UserError("weights: give the weights either in weights: or as style:code::weight, not both.")
    try:
        if text:
            return parse_weights(text, len(sources), "weights")
    except ValueError as exc:
        raise UserError(_sentence(str(exc))) from None
    return tuple(s.weight for s in sources) if coded else ()
