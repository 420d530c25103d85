"""Any Pillow image to 8-bit RGB: the colour-mode half of sanitising a reference (and of encoding a result).

Alpha is composited on white; 16-bit and 32-bit grey are scaled (not clipped) to 0..255; CMYK with an ICC profile
goes through LittleCMS; palette, CMYK, LA, grey and the rest use Pillow's conversion.
"""

from __future__ import annotations

import io

from PIL import Image

__all__ = ["to_rgb"]


def to_rgb(im: Image.Image) -> Image.Image:
    """Bring any Pillow image to 8-bit RGB: alpha over white, 16/32-bit grey scaled, palette/CMYK/LA/grey converted."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()  # detached from the source file object
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_grey_to_rgb(im)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("P", "L", "RGB", "1") and
                                                               "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        converted = _cmyk_via_icc(im)
        if converted is not None:
            return converted
    # P, L, 1, CMYK (Pillow inverts Adobe CMYK JPEGs on decode), YCbCr, LAB, HSV
    return im.convert("RGB")


def _cmyk_via_icc(im: Image.Image) -> Image.Image | None:
    """CMYK with an embedded ICC profile converted to sRGB through LittleCMS (the naive formula is far off for print
    profiles); ``None`` when the profile cannot be used."""
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        dst = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
    except Exception:  # noqa: BLE001 - a broken or unsupported profile falls back to Pillow's plain conversion
        return None


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit grey (``I;16*``) maps 0..65535 onto 0..255; ``I`` (32-bit) is scaled as 16-bit when its values exceed
    255 (that is how 16-bit PNG/TIFF grey often arrives), else taken as 8-bit; ``F`` (float) as 0..1 when its maximum
    is at most 1, else clipped to 0..255."""
    import numpy as np

    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64)
        arr = arr / 65535.0 * 255.0
    elif im.mode == "I":
        arr = np.asarray(im).astype(np.float64)
        arr = arr / 65535.0 * 255.0 if arr.size and arr.max() > 255 else arr
    else:  # F
        arr = np.asarray(im).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
    grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")
