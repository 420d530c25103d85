"""Reference images from Discord attachments: checked before download, decoded safely, stored by content.

Order (cheap first, so a bad file costs as little as possible):

1. :meth:`ReferenceStore.check_declared` — the size and content type Discord declares, and the declared pixel size
   (its count and aspect ratio; a PNG/JPEG/GIF/WebP that Discord gave no size is no image it could read); no
   network, so it runs before the interaction is even deferred;
2. :meth:`ReferenceStore.fetch` — download (the declared size is re-checked on the bytes), then
   ``engine.media.images.load_reference`` in a thread (magic bytes vs. declared type, decoded-pixel limit before decoding,
   full decode, EXIF orientation, alpha/CMYK/16-bit/palette to RGB, first frame of an animation);
3. the sanitised image is shrunk to at most :data:`MAX_SIDE` pixels on its long side (Qwen3-VL reads about a
   megapixel anyway, and a queued job must not hold a 40-megapixel bitmap) and stored as
   ``data_dir/references/<sha256>.png``, so a button pressed after a restart finds it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
from PIL import Image

from bot.errors import UserError
from engine.files import atomic_write_bytes
from engine.media.images import ReferenceImageError, check_reference_shape, load_reference, load_reference_path

log = logging.getLogger(__name__)

#: Longest side of a stored reference, in pixels.
MAX_SIDE = 2048

_GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream", "application/unknown")
#: Types whose pixel size Discord reads and declares (``width``/``height``) on every attachment it can decode. One of
#: these without a size is a file Discord could not read as an image (a text file named ``.png``, say): it is
#: refused at once, before the public "thinking…". BMP and TIFF get no size from Discord, so they are decoded.
_PROBED_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class Reference:
    """A sanitised RGB reference and where its PNG is stored."""

    image: Image.Image
    sha256: str
    path: Path

    def record(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "path": str(self.path), "size": list(self.image.size)}


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


class ReferenceStore:
    """Validates, decodes and stores references under ``root`` (``settings.data_dir / "references"``)."""

    def __init__(self, root: Path, *, max_bytes: int, max_pixels: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    @classmethod
    def from_settings(cls, settings: Any) -> ReferenceStore:
        return cls(settings.data_dir / "references", max_bytes=settings.max_upload_bytes,
                   max_pixels=settings.max_reference_pixels)

    def check_declared(self, attachment: discord.Attachment) -> None:
        """Refuse, before any download, what the attachment's metadata already rules out (:class:`UserError`)."""
        if attachment.size > self.max_bytes:
            raise UserError(f"The reference image is too large: {_mb(attachment.size)} "
                            f"(the limit is {_mb(self.max_bytes)}).")
        declared = (attachment.content_type or "").split(";", 1)[0].strip().lower()
        if declared not in _GENERIC_TYPES and not declared.startswith("image/"):
            raise UserError(f"`{attachment.filename[:60]}` is not an image ({declared}); "
                            "attach a PNG, JPEG, GIF, WebP, BMP or TIFF.")
        if declared in _PROBED_TYPES and not (attachment.width and attachment.height):
            raise UserError(f"`{attachment.filename[:60]}` is not an image Discord could read; "
                            "attach a PNG, JPEG, GIF, WebP, BMP or TIFF.")
        if attachment.width and attachment.height:
            self._check_declared_size(attachment.width, attachment.height)

    def _check_declared_size(self, width: int, height: int) -> None:
        try:
            check_reference_shape(width, height)
        except ReferenceImageError as exc:
            raise UserError(_sentence(str(exc))) from None
        if width * height > self.max_pixels:
            raise UserError(f"The reference image is too large when decoded: {width}×{height} "
                            f"pixels (the limit is {self.max_pixels / 1e6:.1f} megapixels).")

    async def fetch(self, attachment: discord.Attachment) -> Reference:
        """Download, decode and store ``attachment`` (call :meth:`check_declared` first). :class:`UserError` on a
        refused or unreachable file."""
        try:
            data = await attachment.read()
        except (discord.HTTPException, OSError, asyncio.TimeoutError) as exc:
            log.warning("reference download failed: %s", type(exc).__name__)
            raise UserError("I could not download the reference image from Discord; please try again.") from None
        try:
            image = await asyncio.to_thread(load_reference, data, max_bytes=self.max_bytes,
                                            max_pixels=self.max_pixels, declared_type=attachment.content_type)
        except ReferenceImageError as exc:
            raise UserError(_sentence(str(exc))) from None
        return await self.save(image)

    async def save(self, image: Image.Image) -> Reference:
        """Shrink (if needed) and store a sanitised RGB image; the same pixels always land in the same file."""
        return await asyncio.to_thread(self._save, image)

    def _save(self, image: Image.Image) -> Reference:
        if max(image.size) > MAX_SIDE:
            scale = MAX_SIDE / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=4)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / f"{digest}.png"
        if path.exists():
            self.mark_used(path)
        else:
            atomic_write_bytes(path, data)  # makes the folder; a crash never leaves half a PNG under its hash
        return Reference(image, digest, path)

    @staticmethod
    def mark_used(path: Path) -> None:
        """A stored reference was reused (sent again, or named by its style code): its age for the retention
        clean-up (``bot.retention``) counts from now."""
        try:
            os.utime(path)
        except OSError as exc:
            log.info("could not refresh %s: %s", path.name, exc)

    async def load(self, record: dict[str, Any]) -> Reference:
        """The stored reference of a job (its ``record()``); :class:`UserError` when the file is gone."""
        path = Path(record["path"])
        try:
            image = await asyncio.to_thread(load_reference_path, path, max_bytes=1 << 31, max_pixels=1 << 31)
        except ReferenceImageError:
            log.warning("stored reference %s is missing or unreadable", path.name)
            raise UserError("The reference image of that job is no longer stored; please start a new one.") from None
        return Reference(image, str(record.get("sha256") or path.stem), path)


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
