"""Prompts as the bot shows them: the user's text without the characters that could disguise or restyle it.

A prompt is echoed into public cards, status lines and ``/queue``. Control characters there do harm without adding
meaning: bidi overrides (U+202E) reverse what follows so a card reads differently from what was asked, ANSI
escapes (``ESC[31m``) colour a log or terminal that shows the message, other C0/C1 controls break layouts. They
are removed from what is *shown*; the model still receives the prompt unchanged. Ordinary text, emoji and their
zero-width-joiner sequences are kept.
"""

from __future__ import annotations

import re

#: ANSI/VT escape sequences: CSI (``ESC [ params intermediates final``), OSC (``ESC ] ... BEL`` or ``ESC \\``) and the
#: two-character ``ESC x`` forms.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")
#: C0 and C1 controls except tab and newline (handled by :func:`display_text`), DEL, and the bidi controls.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def display_text(text: str, *, one_line: bool = False) -> str:
    """``text`` for display: escape sequences, control and bidi characters removed; with ``one_line``, runs of
    whitespace (newlines, tabs) become one space."""
    shown = _INVISIBLE.sub("", _ESCAPES.sub("", str(text)))
    return " ".join(shown.split()) if one_line else shown
