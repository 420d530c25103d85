"""Style codes on the bot side: give every reference a user sends its code, resolve a typed code under the scope
rules, tell the user in one line when a code's reference expired, and the ``/style`` commands' data.

The code is ``engine.styles.style_code(reference sha256, scope)`` (the one derivation, shared with the CLI); the rows
live in ``style_codes`` (``bot.store.styles``); the image stays the stored reference file
(``bot.references``), so nothing is copied. An embedding evicted from the cache needs nothing here: the job carries
the reference image and the worker's encode stage extracts it again on a miss.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

from PIL import Image

from bot.errors import UserError
from bot.references import Reference, ReferenceStore
from bot.store.styles import StyleCode, StyleCodes, scope_of
from engine.styles import StyleRef, parse_style, single_reference_weight, style_code

log = logging.getLogger(__name__)

#: Longest side of the thumbnail ``/style show`` sends.
THUMBNAIL_SIDE = 256


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def parse_style_option(text: str, option: str = "style") -> StyleRef:
    """What a user typed for ``option`` as a :class:`~engine.styles.StyleRef`, with one reference (a weight other
    than 1 is refused, saying why); :class:`UserError` naming the option otherwise."""
    try:
        ref = parse_style(text, option)
        single_reference_weight(ref, option)
    except ValueError as exc:
        raise UserError(_sentence(str(exc))) from None
    return ref


class StyleBook:
    """Style codes over the ``style_codes`` table and the stored references."""

    def __init__(self, codes: StyleCodes, references: ReferenceStore, retention_days: float) -> None:
        self.codes, self.references, self.retention_days = codes, references, retention_days

    async def remember(self, reference: Reference, *, guild_id: int | None, user_id: int) -> str | None:
        """The code of ``reference`` for ``user_id`` here (recorded, or refreshed); ``None`` in the rare collision
        where the code already names another reference in this scope."""
        scope = scope_of(guild_id, user_id)
        code = style_code(reference.sha256, scope)
        row = await self.codes.add(scope, code, user_id, guild_id, reference.sha256, str(reference.path),
                                   reference.image.size)
        if row is None:
            log.warning("style code %s collides in scope %s; this reference gets no code", code, scope)
            return None
        return code

    async def find(self, text: str, *, guild_id: int | None, user_id: int, option: str = "style") -> StyleCode:
        """The row a typed code names for this user here (cheap: run it before deferring); :class:`UserError` for
        a malformed code or one that does not exist here."""
        return await self.find_ref(parse_style_option(text, option), guild_id=guild_id, user_id=user_id,
                                   option=option)

    async def find_ref(self, ref: StyleRef, *, guild_id: int | None, user_id: int, option: str = "style"
                       ) -> StyleCode:
        """The row of a parsed code (its weight is the caller's: several references); :class:`UserError` when the
        code does not exist here."""
        row = await self.codes.find(ref.code, guild_id=guild_id, user_id=user_id)
        if row is None:
            where = "in this server" if guild_id is not None else "among your codes"
            raise UserError(f"{option}: there is no style {ref.code} {where} (a code works in the server where it "
                            "was made; see `/style list`).")
        return row

    def expired_message(self, row: StyleCode, option: str = "style") -> str:
        """The one line for a code whose reference file the retention policy removed."""
        kept = f" (references are kept {self.retention_days:g} days after their last use)" if self.retention_days \
            else ""
        return (f"{option}: the reference image of style {row.code} expired under the retention policy{kept}; "
                "send the image again to get a new code.")

    async def load(self, row: StyleCode, option: str = "style") -> Reference:
        """The stored reference of ``row``, its age refreshed; :class:`UserError` (one line) when it expired."""
        path = Path(row.reference_path)
        if not path.is_file():
            raise UserError(self.expired_message(row, option))
        try:
            reference = await self.references.load(row.reference_record())
        except UserError:
            raise UserError(self.expired_message(row, option)) from None
        self.references.mark_used(path)
        await self.codes.used(row)
        return reference

    async def thumbnail(self, row: StyleCode) -> bytes:
        """A PNG of at most :data:`THUMBNAIL_SIDE` px of ``row``'s reference; :class:`UserError` when it expired."""
        path = Path(row.reference_path)
        try:
            return await asyncio.to_thread(_thumbnail_png, path)
        except OSError:
            raise UserError(self.expired_message(row, option="style")) from None

    async def forget(self, text: str, *, guild_id: int | None, user_id: int) -> str:
        """Delete the user's own row of a typed code here; the code. :class:`UserError` when they have none."""
        ref = parse_style_option(text, "code")
        if not await self.codes.forget(ref.code, guild_id=guild_id, user_id=user_id):
            raise UserError(f"code: you have no style {ref.code} here (see `/style list`).")
        return ref.code


def _thumbnail_png(path: Path) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
