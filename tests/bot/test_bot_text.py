"""bot.text.display_text: what a shown prompt keeps and loses (expectations written out by hand)."""

from __future__ import annotations

import pytest

from bot.text import display_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a red fox", "a red fox"),
        ("abc\u202edcba\u202c end", "abcdcba end"),  # right-to-left override and its pop
        ("\u2066iso\u2069 \u200eltr\u200f \u061carabic mark", "iso ltr arabic mark"),
        ("\x1b[31mred\x1b[0m and \x1b[1;4;38;5;196mbold\x1b[m", "red and bold"),
        ("title \x1b]0;pwned\x07 after, \x1b]8;;http://x\x1b\\link", "title  after, link"),
        ("bell\x07 nul\x00 del\x7f c1\x85\x9b31m", "bell nul del c1"),
        ("lone \x1b escape", "lone  escape"),
        ("emoji 👩‍👩‍👧 and flags 🇫🇷, accents éü, CJK 山水", "emoji 👩‍👩‍👧 and flags 🇫🇷, accents éü, CJK 山水"),
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),
    ],
)
def test_display_text_removes_controls_and_keeps_text(raw: str, shown: str) -> None:
    assert display_text(raw) == shown


def test_one_line_folds_whitespace() -> None:
    assert display_text("a\n\nb\t c\u202e", one_line=True) == "a b c"
