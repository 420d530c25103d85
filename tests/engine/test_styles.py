"""engine.styles: the style-code derivation (stable, scoped), the ``code::weight`` syntax, the CLI's local store."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from engine.styles import LocalStyles, StyleRef, parse_style, single_reference_weight, style_code

SHA = hashlib.sha256(b"a reference").hexdigest()


def test_the_code_is_eight_hex_digits_of_a_scoped_hash():
    expected = hashlib.sha256(f"zvl-style-code/v1\ng42\n{SHA}".encode()).hexdigest()[:8]
    assert style_code(SHA, "g42") == expected
    assert style_code(SHA.upper(), "g42") == expected  # the hash's spelling does not matter


def test_the_same_image_gets_unrelated_codes_in_two_servers():
    codes = {style_code(SHA, f"g{g}") for g in range(200)}
    assert len(codes) == 200  # no two servers share it (2^-32 per pair)
    other = hashlib.sha256(b"another reference").hexdigest()
    assert style_code(other, "g1") != style_code(SHA, "g1")


@pytest.mark.parametrize(("sha", "scope"), [("abc", "g1"), (SHA, ""), (SHA, "g1\nu2"), ("z" * 64, "g1")])
def test_bad_derivation_inputs_are_refused(sha, scope):
    with pytest.raises(ValueError):
        style_code(sha, scope)


@pytest.mark.parametrize(("text", "expected"), [
    ("ab12cd34", StyleRef("ab12cd34")),
    ("  AB12CD34 ", StyleRef("ab12cd34")),
    ("ab12cd34::2", StyleRef("ab12cd34", 2.0)),
    ("ab12cd34:: 0.5", StyleRef("ab12cd34", 0.5)),
    ("ab12cd34::1", StyleRef("ab12cd34", 1.0)),
])
def test_codes_and_weights_parse(text, expected):
    assert parse_style(text) == expected


@pytest.mark.parametrize(("text", "needle"), [
    ("ab12cd3", "style: “ab12cd3” is not a style code; a code is 8 characters 0-9/a-f"),
    ("ab12cd345", "is not a style code"),
    ("gh12cd34", "is not a style code"),
    ("", "“” is not a style code"),
    ("ab12cd34::", "the weight after “::” must be a number above 0"),
    ("ab12cd34::0", "must be a number above 0 (e.g. ab12cd34::2); got “0”"),
    ("ab12cd34::-2", "got “-2”"),
    ("ab12cd34::nan", "got “nan”"),
    ("ab12cd34::inf", "got “inf”"),
    ("ab12cd34::two", "got “two”"),
])
def test_bad_codes_name_the_option_in_one_line(text, needle):
    with pytest.raises(ValueError) as info:
        parse_style(text)
    message = str(info.value)
    assert message.startswith("style: ") and needle in message and "\n" not in message


def test_the_option_name_is_the_callers():
    with pytest.raises(ValueError, match=r"^--style: "):
        parse_style("nope", "--style")


def test_a_weight_needs_several_references():
    single_reference_weight(StyleRef("ab12cd34"))
    single_reference_weight(StyleRef("ab12cd34", 1.0))
    with pytest.raises(ValueError, match=r"^style: a weight \(::2\) only matters when several references"):
        single_reference_weight(StyleRef("ab12cd34", 2.0))
    assert str(StyleRef("ab12cd34", 2.0)) == "ab12cd34::2" and str(StyleRef("ab12cd34")) == "ab12cd34"


def test_local_store_round_trip(tmp_path):
    store = LocalStyles(tmp_path)
    image = Image.new("RGB", (30, 20), (1, 2, 3))
    code = store.remember(image)
    again = LocalStyles(tmp_path).remember(image.copy())  # a new process, the same pixels
    assert code == again and list(LocalStyles(tmp_path).codes()) == [code]
    path = LocalStyles(tmp_path).path_of(StyleRef(code))
    assert code == style_code(hashlib.sha256(path.read_bytes()).hexdigest(), "local")
    with Image.open(path) as stored:
        assert stored.size == (30, 20) and stored.getpixel((0, 0)) == (1, 2, 3)
    path.unlink()
    with pytest.raises(ValueError, match="is no longer stored"):
        store.path_of(StyleRef(code))
    with pytest.raises(ValueError, match="no style 00000000"):
        store.path_of(StyleRef("00000000"))


def test_an_unreadable_local_store_is_one_clear_error(tmp_path):
    (tmp_path / "styles.json").write_text("{not json")
    with pytest.raises(ValueError, match="is unreadable"):
        LocalStyles(tmp_path).codes()
