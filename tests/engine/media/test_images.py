"""engine.media.images: hostile and unusual references, PNG metadata, upload encoding."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.media.images import (
    ReferenceImageError,
    check_reference_shape,
    encode_for_upload,
    load_reference,
    load_reference_path,
    png_with_metadata,
    read_metadata,
    read_png_metadata,
    sniff_format,
)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels and which holds no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        _chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------------------
# unusual but valid references
# --------------------------------------------------------------------------------------------------------------


def test_rgba_is_composited_on_white():
    im = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 255, 255))
    out = load_reference(_save(im, "PNG"))
    assert out.mode == "RGB" and out.size == (40, 30)
    assert out.getpixel((5, 5)) == (255, 255, 255)  # fully transparent -> white, not the hidden red
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_half_transparent_blends_with_white():
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    px = load_reference(_save(im, "PNG")).getpixel((0, 0))
    assert all(abs(c - 127) <= 1 for c in px)


def test_palette_with_transparency():
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    im.putpixel((3, 3), 1)
    data = _save(im, "PNG", transparency=0)
    out = load_reference(data)
    assert out.mode == "RGB" and out.size == (20, 10)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent palette entry
    assert out.getpixel((3, 3)) == (255, 0, 0)


def test_grayscale_and_la():
    grey = Image.new("L", (16, 24), 77)
    out = load_reference(_save(grey, "PNG"))
    assert out.mode == "RGB" and out.size == (16, 24) and out.getpixel((1, 1)) == (77, 77, 77)
    la = Image.new("LA", (16, 24), (10, 0))
    assert load_reference(_save(la, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.zeros((10, 12), dtype=np.uint16)
    arr[0, 0] = 65535
    arr[0, 1] = 32768
    arr[0, 2] = 200  # would stay 200 if the values were clipped instead of scaled
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    for fmt in ("PNG", "TIFF"):
        out = load_reference(_save(im, fmt))
        assert out.mode == "RGB" and out.size == (12, 10)
        assert out.getpixel((0, 0)) == (255, 255, 255)
        assert out.getpixel((1, 0)) == (128, 128, 128)
        assert out.getpixel((2, 0)) == (1, 1, 1)


def test_sixteen_bit_rgb_png():
    raw = b"".join(b"\x00" + np.full((8, 3), 40000, dtype=">u2").tobytes() for _ in range(8))
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    out = load_reference(data)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257


def test_thirty_two_bit_grey_tiff():
    im = Image.fromarray(np.full((6, 6), 65535, dtype=np.int32), mode="I")
    assert load_reference(_save(im, "TIFF")).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg():
    im = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = load_reference(_save(im, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (32, 16)
    r, g, b = out.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_reference(data)
    assert out.mode == "RGB" and out.size == (20, 20)
    r, g, b = out.getpixel((10, 10))
    assert r > 200 and b < 50


def test_animated_webp_uses_first_frame():
    frames = [Image.new("RGB", (24, 16), c) for c in ((0, 0, 255), (255, 0, 0))]
    data = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = load_reference(data)
    assert out.size == (24, 16) and out.getpixel((3, 3))[2] > 200


def test_exif_rotated_jpeg_is_upright():
    im = Image.new("RGB", (60, 20), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_reference(_save(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (20, 60)  # width and height swapped
    assert out.getpixel((10, 2))[1] < 80  # the red strip is now along the top
    assert out.getpixel((10, 57)) == pytest.approx((255, 255, 255), abs=20)


@pytest.mark.parametrize("fmt,kw", [("WEBP", {"quality": 90}), ("BMP", {}), ("TIFF", {}), ("JPEG", {})])
def test_other_formats(fmt, kw):
    im = Image.new("RGB", (48, 32), (10, 200, 30))
    out = load_reference(_save(im, fmt, **kw))
    assert out.mode == "RGB" and out.size == (48, 32)


def test_large_reference_loads():
    im = Image.effect_noise((3000, 2000), 64).convert("RGB")
    data = _save(im, "JPEG", quality=80)
    out = load_reference(data, max_bytes=50 << 20, max_pixels=40_000_000)
    assert out.size == (3000, 2000)


# --------------------------------------------------------------------------------------------------------------
# hostile or broken references
# --------------------------------------------------------------------------------------------------------------


def test_decompression_bomb_refused_from_header():
    data = _png_header_only(100_000, 100_000)
    t = time.perf_counter()
    with pytest.raises(ReferenceImageError, match="too large when decoded"):
        load_reference(data)
    assert time.perf_counter() - t < 1.0


def test_pixel_limit_is_ours_not_pillows():
    # 8000x8000 is under Pillow's own bomb limit but over ours; the header-only file proves nothing is decoded
    # (decoding it would fail as truncated, with a different message).
    with pytest.raises(ReferenceImageError, match="8000x8000"):
        load_reference(_png_header_only(8000, 8000), max_pixels=40_000_000)
    with pytest.raises(ReferenceImageError, match="too large when decoded"):
        load_reference(_save(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)


@pytest.mark.parametrize("size", [(3000, 1), (1, 3000), (202, 2), (2, 101 * 2 + 1)])
def test_too_thin_is_refused_from_the_header(size):
    """Beyond 100:1 (Qwen3-VL's processor refuses 200:1, after the models loaded): refused from the header alone."""
    with pytest.raises(ReferenceImageError, match=rf"{size[0]}x{size[1]} pixels, too thin to read"):
        load_reference(_png_header_only(*size))
    with pytest.raises(ReferenceImageError, match="too thin"):
        check_reference_shape(*size)


@pytest.mark.parametrize("size", [(100, 1), (1, 100), (200, 2), (3000, 30), (64, 48)])
def test_up_to_one_hundred_to_one_is_accepted(size):
    assert load_reference(_save(Image.new("RGB", size, (9, 99, 199)), "PNG")).size == size
    check_reference_shape(*size)


def test_byte_limit():
    data = _save(Image.effect_noise((200, 200), 60).convert("RGB"), "PNG")
    with pytest.raises(ReferenceImageError, match="too large"):
        load_reference(data, max_bytes=1000)


@pytest.mark.parametrize("declared", ["image/jpeg", "image/gif", "text/html", "application/pdf"])
def test_declared_type_contradiction(declared):
    data = _save(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(ReferenceImageError, match="mislabelled"):
        load_reference(data, declared_type=declared)


@pytest.mark.parametrize("declared", [None, "", "image/png", "IMAGE/PNG; charset=binary", "application/octet-stream"])
def test_declared_type_agreeing_or_generic(declared):
    data = _save(Image.new("RGB", (8, 8)), "PNG")
    assert load_reference(data, declared_type=declared).size == (8, 8)


@pytest.mark.parametrize("data", [b"", b"hello world, not an image", b"%PDF-1.7\n...", b"<svg xmlns='x'/>",
                                  b"\x00\x00\x01\x00icon"])
def test_not_an_image(data):
    with pytest.raises(ReferenceImageError):
        load_reference(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated(fmt):
    data = _save(Image.effect_noise((64, 64), 80).convert("RGB"), fmt)
    with pytest.raises(ReferenceImageError, match="corrupt or truncated|could not be read"):
        load_reference(data[: len(data) // 2])


def test_messages_are_one_line():
    for data in (b"nope", _png_header_only(100_000, 100_000), b"\x89PNG\r\n\x1a\n garbage"):
        with pytest.raises(ReferenceImageError) as info:
            load_reference(data)
        msg = str(info.value)
        assert msg and "\n" not in msg and "Traceback" not in msg


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                              b"BM", b"II*\x00", b"MM\x00*", b""]),
       body=st.binary(max_size=300))
def test_fuzz_only_reference_errors(magic, body):
    try:
        out = load_reference(magic + body, max_pixels=1_000_000)
    except ReferenceImageError as exc:
        assert "\n" not in str(exc)
    else:
        assert out.mode == "RGB"


def test_sniff_format():
    assert sniff_format(_save(Image.new("RGB", (4, 4)), "PNG")) == "png"
    assert sniff_format(_save(Image.new("RGB", (4, 4)), "WEBP")) == "webp"
    assert sniff_format(b"RIFF1234WAVE") is None


def test_load_reference_path(tmp_path):
    with pytest.raises(ReferenceImageError, match="does not exist"):
        load_reference_path(tmp_path / "missing.png")
    with pytest.raises(ReferenceImageError, match="directory"):
        load_reference_path(tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ReferenceImageError, match="notes.png"):
        load_reference_path(bad)
    good = tmp_path / "photo.jpg"  # a PNG with a .jpg name: the bytes decide
    good.write_bytes(_save(Image.new("RGBA", (10, 12)), "PNG"))
    assert load_reference_path(good).size == (10, 12)


# --------------------------------------------------------------------------------------------------------------
# metadata and upload encoding
# --------------------------------------------------------------------------------------------------------------

RECORD = {"params": {"prompt": "un café à Zürich — 猫", "alpha": 0.3, "seeds": [42], "steps": 9, "shift": 3.0},
          "timings": {"total": 1.5}}


def test_png_metadata_roundtrip():
    data = png_with_metadata(Image.new("RGB", (16, 16), (1, 2, 3)), RECORD)
    assert read_png_metadata(data) == RECORD
    assert read_metadata(data) == RECORD
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert "alpha: 0.3" in im.text["parameters"]
        assert im.text["parameters"].startswith("un café")
    assert read_png_metadata(_save(Image.new("RGB", (4, 4)), "PNG")) == {}
    with pytest.raises(ValueError):
        read_png_metadata(b"GIF89a....")


def test_encode_for_upload_png_when_it_fits():
    im = Image.new("RGB", (64, 64), (9, 9, 9))
    data, name, ctype = encode_for_upload(im, RECORD, 1 << 20, stem="grid")
    assert (name, ctype) == ("grid.png", "image/png")
    assert read_png_metadata(data) == RECORD


def test_encode_for_upload_falls_back_under_a_tight_limit():
    im = Image.effect_noise((512, 512), 90).convert("RGB")
    png = png_with_metadata(im, RECORD)
    limit = len(png) // 4
    data, name, ctype = encode_for_upload(im, RECORD, limit)
    assert len(data) <= limit and ctype in ("image/webp", "image/jpeg") and name.endswith((".webp", ".jpg"))
    with Image.open(io.BytesIO(data)) as out:
        assert out.size == (512, 512)
    assert read_metadata(data)["params"]["alpha"] == 0.3

    small_limit = 6000  # needs a downscale
    data, _name, _ctype = encode_for_upload(im, RECORD, small_limit)
    assert len(data) <= small_limit
    with Image.open(io.BytesIO(data)) as out:
        assert out.width < 512

    with pytest.raises(ValueError, match="cannot encode"):
        encode_for_upload(im, RECORD, 50)
