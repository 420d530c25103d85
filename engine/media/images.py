"""Reference-image decoding and sanitising, and PNG metadata / upload encoding of results.

Used by the CLI (``load_reference_path``) and by the Discord bot, which validates an attachment with
:func:`load_reference` *before* queuing a job. Every refusal is a :class:`ReferenceImageError` whose ``str()`` is one
sentence fit to show a user (no paths from inside the program, no exception class names).

What :func:`load_reference` guarantees, in order:

1. the byte size is within ``max_bytes`` (checked before anything is parsed);
2. the magic bytes are one of PNG, JPEG, GIF, WebP, BMP, TIFF, and agree with ``declared_type`` when one is given;
3. the size read from the *header* has pixels and an aspect ratio within :data:`MAX_ASPECT` (what Qwen3-VL can
   read), and its pixel count is within ``max_pixels`` (checked before decoding; this check does not
   depend on ``PIL.Image.MAX_IMAGE_PIXELS``, and Pillow's own bomb error is reported the same way);
4. the first frame decodes completely (truncated or corrupt data is refused, never half-decoded);
5. the EXIF orientation is applied, and the colour mode is brought to 8-bit RGB: alpha is composited on white,
   16-bit and 32-bit grey are scaled (not clipped) to 0..255, palette, CMYK, LA, grey and others are converted.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin

from engine.media.colour import to_rgb

log = logging.getLogger(__name__)

__all__ = [
    "ReferenceImageError",
    "FORMATS",
    "sniff_format",
    "MAX_ASPECT",
    "check_reference_shape",
    "load_reference",
    "load_reference_path",
    "png_with_metadata",
    "read_png_metadata",
    "read_metadata",
    "encode_for_upload",
    "parameters_text",
]

#: Accepted formats: sniffed name -> (Pillow format name, canonical MIME type).
FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "gif": ("GIF", "image/gif"),
    "webp": ("WEBP", "image/webp"),
    "bmp": ("BMP", "image/bmp"),
    "tiff": ("TIFF", "image/tiff"),
}

#: Content types that say nothing about the format (browsers and some clients send these); never a contradiction.
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/unknown"}

#: Spellings seen in the wild for the accepted formats.
_TYPE_ALIASES = {
    "image/png": "png", "image/x-png": "png", "image/apng": "png",
    "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp", "image/x-bmp": "bmp", "image/x-ms-bmp": "bmp",
    "image/tiff": "tiff", "image/tif": "tiff", "image/x-tiff": "tiff",
}

#: Longest side over shortest side that a reference may have. Qwen3-VL's processor refuses 200:1 and beyond
#: ("absolute aspect ratio must be smaller than 200"), after the models have loaded; the token-budget resize and the
#: processor's rounding to 32-pixel tokens move the ratio a little, so the limit keeps a wide margin. A strip
#: thinner than 100:1 carries little style to read anyway.
MAX_ASPECT = 100

#: Text chunk holding the JSON record in PNGs written by :func:`png_with_metadata`.
METADATA_KEY = "zvl"


class ReferenceImageError(ValueError):
    """A reference image was refused. ``str()`` is one sentence fit to show a user."""


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB" if n >= (1 << 20) else f"{n / 1024:.0f} KB"


def sniff_format(data: bytes) -> str | None:
    """The format named by the leading bytes (a key of :data:`FORMATS`), or ``None`` when none matches."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def _declared_format(declared_type: str) -> str | None:
    """``None`` for a generic type, the format key for a known image type, else ``"?"`` (a contradiction)."""
    t = declared_type.split(";", 1)[0].strip().lower()
    if t in _GENERIC_TYPES:
        return None
    return _TYPE_ALIASES.get(t, "?")


def load_reference(data: bytes, *, max_bytes: int = 20 << 20, max_pixels: int = 40_000_000,
                   declared_type: str | None = None) -> Image.Image:
    """Decode untrusted reference-image bytes into a sanitised 8-bit RGB image (see the module docstring).

    Raises :class:`ReferenceImageError` (a ``ValueError``) with a user-safe one-line message on any refusal.
    """
    data, kind = _checked_bytes(data, max_bytes, declared_type)
    pil_format = FORMATS[kind][0]
    with warnings.catch_warnings():
        # Our own limit (below) is the one that decides; Pillow's warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # "Corrupt EXIF data" and alike
        im = _open_checked(data, pil_format, max_pixels)
        _decode_first_frame(im, pil_format, max_pixels)
        try:
            im = to_rgb(_apply_orientation(im))
        except Exception:  # noqa: BLE001
            raise ReferenceImageError(f"the reference image uses an unsupported colour mode ({im.mode})") from None
    if im.width * im.height > max_pixels:  # cannot happen (transposing keeps the count); belt and braces
        raise ReferenceImageError(_too_many_pixels_message(im.size, max_pixels))
    return im


def _checked_bytes(data: Any, max_bytes: int, declared_type: str | None) -> tuple[bytes, str]:
    """Steps 1-2: the bytes, their size, and the format their magic bytes name (agreeing with ``declared_type``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ReferenceImageError("the reference image must be given as bytes")
    data = bytes(data)
    if not data:
        raise ReferenceImageError("the reference image is empty")
    if len(data) > max_bytes:
        raise ReferenceImageError(f"the reference image is too large: {_mb(len(data))} (the limit is {_mb(max_bytes)})")
    kind = sniff_format(data)
    if kind is None:
        raise ReferenceImageError("the reference is not a supported image (use PNG, JPEG, GIF, WebP, BMP or TIFF)")
    if declared_type:
        declared = _declared_format(declared_type)
        if declared is not None and declared != kind:
            raise ReferenceImageError(
                f"the reference claims to be {declared_type.split(';', 1)[0].strip()} but its contents are "
                f"{FORMATS[kind][1]}; refusing a mislabelled file")
    return data, kind


def _open_checked(data: bytes, pil_format: str, max_pixels: int) -> Image.Image:
    """Step 3: open (header only) and refuse a shape or pixel count over the limits before anything is decoded."""
    try:
        im = Image.open(io.BytesIO(data), formats=[pil_format])
    except Image.DecompressionBombError:
        raise ReferenceImageError(_too_many_pixels_message(None, max_pixels)) from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for hostile headers
        raise ReferenceImageError(f"the reference image could not be read: not a valid {pil_format} file") from None
    width, height = im.size
    check_reference_shape(width, height)
    if width * height > max_pixels:
        raise ReferenceImageError(_too_many_pixels_message((width, height), max_pixels))
    return im


def _decode_first_frame(im: Image.Image, pil_format: str, max_pixels: int) -> None:
    """Step 4: decode the first frame completely; truncated or corrupt data is refused, never half-decoded."""
    try:
        im.seek(0)  # animated GIF / WebP / APNG, multi-page TIFF: the first frame
        im.load()
    except Image.DecompressionBombError:
        raise ReferenceImageError(_too_many_pixels_message(im.size, max_pixels)) from None
    except MemoryError:
        raise ReferenceImageError("the reference image is too large to decode") from None
    except Exception:  # noqa: BLE001 - truncated data raises OSError, bad tables ValueError/SyntaxError/...
        raise ReferenceImageError(
            f"the reference image is corrupt or truncated (its {pil_format} data could not be decoded)") from None


def check_reference_shape(width: int, height: int) -> None:
    """Refuse a reference with no pixels or one thinner than :data:`MAX_ASPECT` (:class:`ReferenceImageError`).

    Cheap (a header or Discord's attachment metadata is enough), so callers run it before any model loads and
    before a job is queued.
    """
    if width < 1 or height < 1:
        raise ReferenceImageError("the reference image has no pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ReferenceImageError(
            f"the reference image is {width}x{height} pixels, too thin to read: its long side may be at most "
            f"{MAX_ASPECT} times its short side; crop it or send another image")


def _too_many_pixels_message(size: tuple[int, int] | None, max_pixels: int) -> str:
    what = f"{size[0]}x{size[1]} pixels" if size else "more pixels than allowed"
    return (f"the reference image is too large when decoded: {what} (the limit is {max_pixels / 1e6:.1f} megapixels); "
            "please send a smaller image")


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as it is (logged, not fatal)."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a usable image unusable
        log.info("ignoring a malformed EXIF orientation in a reference image")
        return im
    return out if out is not None else im


def load_reference_path(path: str | Path, *, max_bytes: int = 20 << 20, max_pixels: int = 40_000_000) -> Image.Image:
    """:func:`load_reference` for a file (the CLI). A missing or unreadable file is a :class:`ReferenceImageError`.

    The file's extension is not trusted or checked: the format is decided by its bytes.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ReferenceImageError(f"reference image {p} does not exist") from None
    except OSError as exc:
        raise ReferenceImageError(f"cannot read reference image {p}: {exc.strerror or exc}") from None
    if p.is_dir():
        raise ReferenceImageError(f"reference image {p} is a directory, not a file")
    if st.st_size > max_bytes:  # refuse before reading a huge file into memory
        raise ReferenceImageError(
            f"reference image {p} is too large: {_mb(st.st_size)} (the limit is {_mb(max_bytes)})")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ReferenceImageError(f"cannot read reference image {p}: {exc.strerror or exc}") from None
    try:
        return load_reference(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ReferenceImageError as exc:
        raise ReferenceImageError(f"{p}: {exc}") from None


# --------------------------------------------------------------------------------------------------------------
# metadata and upload encoding
# --------------------------------------------------------------------------------------------------------------


def _json(record: dict[str, Any], *, ascii_only: bool = False) -> str:
    return json.dumps(record, ensure_ascii=ascii_only, sort_keys=True, default=str, separators=(",", ":"))


def parameters_text(record: dict[str, Any]) -> str:
    """A human-readable summary (A1111-style ``parameters``): the prompt, then ``key: value`` pairs on one line."""
    params = record.get("params", record)
    prompt = str(params.get("prompt", ""))
    keys = ["alpha", "blend_mode", "hidden_layer", "tokens", "normalization", "outlier_mode", "append_tokens",
            "seeds", "steps", "width", "height", "strength", "guidance_scale", "shift", "think"]
    parts = []
    for k in keys:
        if k in params:
            v = params[k]
            if isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            parts.append(f"{k}: {v}")
    return f"{prompt}\n" + ", ".join(parts)


def png_with_metadata(image: Image.Image, record: dict[str, Any]) -> bytes:
    """PNG bytes of ``image`` with the JSON ``record`` in a ``zvl`` text chunk (iTXt when it is not Latin-1) and a
    human-readable ``parameters`` chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, _json(record))  # add_text switches to iTXt by itself for non-Latin-1 text
    info.add_text("parameters", parameters_text(record))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buf.getvalue()


def read_png_metadata(data: bytes) -> dict[str, Any]:
    """The record stored by :func:`png_with_metadata`; ``{}`` for a PNG without one. ``ValueError`` for non-PNG
    bytes or an unreadable record."""
    if sniff_format(data) != "png":
        raise ValueError("not a PNG image")
    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
        im.load()  # text chunks after IDAT are only read with the image data
        text = getattr(im, "text", {}) or {}
        raw = text.get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        out = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"the {METADATA_KEY!r} metadata chunk is not valid JSON") from None
    if not isinstance(out, dict):
        raise ValueError(f"the {METADATA_KEY!r} metadata chunk is not a JSON object")
    return out


#: EXIF ImageDescription: where WebP and JPEG fallbacks keep the record (ASCII JSON).
_EXIF_DESCRIPTION = 0x010E


def _exif_with_record(record: dict[str, Any]) -> bytes:
    exif = Image.Exif()
    exif[_EXIF_DESCRIPTION] = _json(record, ascii_only=True)
    return exif.tobytes()


def read_metadata(data: bytes) -> dict[str, Any]:
    """The record from a PNG (``zvl`` chunk) or a WebP/JPEG written by :func:`encode_for_upload` (EXIF); ``{}``
    when there is none."""
    kind = sniff_format(data)
    if kind == "png":
        return read_png_metadata(data)
    if kind not in ("webp", "jpeg"):
        raise ValueError("not a PNG, WebP or JPEG image")
    with Image.open(io.BytesIO(data)) as im:
        raw = im.getexif().get(_EXIF_DESCRIPTION)
    if not raw:
        return {}
    try:
        out = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return {}
    return out if isinstance(out, dict) else {}


def _encode(image: Image.Image, fmt: str, quality: int, exif: bytes) -> bytes:
    buf = io.BytesIO()
    if fmt == "WEBP":
        image.save(buf, format="WEBP", quality=quality, method=4, exif=exif)
    else:
        image.save(buf, format="JPEG", quality=quality, optimize=True, exif=exif)
    return buf.getvalue()


def encode_for_upload(image: Image.Image, record: dict[str, Any], limit_bytes: int, *,
                      stem: str = "zvl") -> tuple[bytes, str, str]:
    """Encode ``image`` for an upload of at most ``limit_bytes``: ``(data, filename, content_type)``.

    Order: PNG with metadata; then WebP at quality 90/80/70/60/50 and JPEG at 90/75/60 (the record in EXIF); then the
    image is downscaled by 0.75 per round (WebP 80/60, JPEG 70) until it fits or its long side drops below 64 px, at
    which point ``ValueError`` is raised.
    """
    if limit_bytes <= 0:
        raise ValueError(f"limit_bytes must be positive; got {limit_bytes}")
    rgb = image if image.mode == "RGB" else to_rgb(image)
    png = png_with_metadata(rgb, record)
    if len(png) <= limit_bytes:
        return png, f"{stem}.png", "image/png"
    exif = _exif_with_record(record)
    if len(exif) > limit_bytes // 4:  # a record that dwarfs the image is dropped rather than forcing a downscale
        exif = b""
    attempts = [("WEBP", q) for q in (90, 80, 70, 60, 50)] + [("JPEG", q) for q in (90, 75, 60)]
    current = rgb
    while True:
        for fmt, quality in attempts:
            data = _encode(current, fmt, quality, exif)
            if len(data) <= limit_bytes:
                ext, ctype = (".webp", "image/webp") if fmt == "WEBP" else (".jpg", "image/jpeg")
                return data, f"{stem}{ext}", ctype
        w, h = current.size
        nw, nh = int(w * 0.75), int(h * 0.75)
        if max(nw, nh) < 64 or min(nw, nh) < 1:
            raise ValueError(f"cannot encode a {image.width}x{image.height} image in {limit_bytes} bytes")
        current = rgb.resize((nw, nh), Image.Resampling.LANCZOS)
        attempts = [("WEBP", 80), ("WEBP", 60), ("JPEG", 70)]
