"""Style codes: a short, stable name for a stored reference image, so a style can be reused without the image.

* :func:`style_code` is the one rule that derives a code: the first 8 hex digits of a SHA-256 over a version tag,
  a **scope** and the stored reference's content hash. The bot scopes codes by server (``g<guild id>``; a code made
  in a direct message is scoped to its user, ``u<user id>``), the CLI by its local store (``local``). The same image
  sent in two servers gets two unrelated codes, and a code is looked up only inside its scope, so a code seen in one
  server names nothing in another and never leads to that server's image.
* :func:`parse_style` reads what a user types: ``ab12cd34`` or ``ab12cd34::2`` (Midjourney's ``--sref`` weight
  syntax). The weight is parsed and kept (for requests with several references); :func:`single_reference_weight`
  is the rule that, with one reference, only ``::1`` means anything.
* :class:`LocalStyles` is the CLI's own store: reference PNGs by content plus a small ``styles.json`` under the
  data folder (the bot keeps its codes in SQLite, ``bot.store.styles``).

Pure Python and Pillow: no torch, no discord.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engine.files import atomic_write_bytes

__all__ = ["CODE_LENGTH", "LOCAL_SCOPE", "LocalStyles", "StyleRef", "parse_style", "single_reference_weight",
           "style_code"]

#: Characters of a style code (hex digits: 32 bits, ample inside one server's references).
CODE_LENGTH = 8
#: The scope of the CLI's local codes.
LOCAL_SCOPE = "local"
#: Bumped only if the derivation ever changes (old codes would then stop resolving, so: never, in practice).
_VERSION = "zvl-style-code/v1"
_CODE_RE = re.compile(r"[0-9a-f]{%d}" % CODE_LENGTH)
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_EXAMPLE = "ab12cd34"


def style_code(reference_sha256: str, scope: str) -> str:
    """The code of the reference whose stored PNG has SHA-256 ``reference_sha256``, inside ``scope``."""
    digest = str(reference_sha256).strip().lower()
    if not _SHA_RE.fullmatch(digest):
        raise ValueError(f"reference_sha256 must be 64 hex digits; got {reference_sha256!r}")
    if not scope or "\n" in scope:
        raise ValueError(f"scope must be a non-empty single line; got {scope!r}")
    return hashlib.sha256(f"{_VERSION}\n{scope}\n{digest}".encode()).hexdigest()[:CODE_LENGTH]


@dataclass(frozen=True)
class StyleRef:
    """A style code as typed, with its weight (``::w``; 1 when not given)."""

    code: str
    weight: float = 1.0

    def __str__(self) -> str:
        return self.code if self.weight == 1.0 else f"{self.code}::{self.weight:g}"


def parse_style(text: str, option: str = "style") -> StyleRef:
    """``"ab12cd34"`` or ``"ab12cd34::2"`` → :class:`StyleRef`; ``ValueError`` naming ``option`` otherwise."""
    raw = str(text).strip()
    code, sep, weight_text = raw.partition("::")
    code = code.strip().lower()
    if not _CODE_RE.fullmatch(code):
        shown = raw[:24] + ("…" if len(raw) > 24 else "")
        raise ValueError(f"{option}: “{shown}” is not a style code; a code is {CODE_LENGTH} characters 0-9/a-f "
                         f"(e.g. {_EXAMPLE}), optionally with a weight (e.g. {_EXAMPLE}::2)")
    if not sep:
        return StyleRef(code)
    try:
        weight = float(weight_text.strip())
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{option}: the weight after “::” must be a number above 0 (e.g. {_EXAMPLE}::2); "
                         f"got “{weight_text.strip()[:12]}”")
    return StyleRef(code, weight)


def single_reference_weight(ref: StyleRef, option: str = "style") -> None:
    """With one reference a weight is meaningless (the blend normalises it away): only ``::1`` is accepted, so that a
    user who types ``::2`` is told instead of silently ignored."""
    if ref.weight != 1.0:
        raise ValueError(f"{option}: a weight (::{ref.weight:g}) only matters when several references are mixed, "
                         f"and this request has one; use {ref.code} (or {ref.code}::1)")


def png_bytes(image: Image.Image) -> bytes:
    """How a reference is stored: an RGB PNG (the same pixels always give the same bytes, hence the same hash)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


class LocalStyles:
    """The CLI's style codes: ``root/references/<sha256>.png`` and ``root/styles.json`` (code → reference)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.index_path = self.root / "styles.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"the style store {self.index_path} is unreadable ({type(exc).__name__}); "
                             "move it away to start a new one") from None
        return data if isinstance(data, dict) else {}

    def remember(self, image: Image.Image) -> str:
        """Store ``image`` by content (once) and return its code."""
        data = png_bytes(image)
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "references" / f"{digest}.png"
        if not path.exists():
            atomic_write_bytes(path, data)
        code = style_code(digest, LOCAL_SCOPE)
        index = self._read()
        entry = index.get(code) or {"sha256": digest, "path": str(path), "size": list(image.size),
                                    "created_at": time.time()}
        index[code] = {**entry, "last_used_at": time.time()}
        atomic_write_bytes(self.index_path, json.dumps(index, indent=1, sort_keys=True).encode())
        return code

    def path_of(self, ref: StyleRef, option: str = "--style") -> Path:
        """The stored reference of ``ref``; ``ValueError`` (one line, naming ``option``) when unknown or gone."""
        entry = self._read().get(ref.code)
        if entry is None:
            raise ValueError(f"{option}: no style {ref.code} in {self.index_path} (codes are made by running "
                             "stylize with -i IMAGE)")
        path = Path(entry["path"])
        if not path.is_file():
            raise ValueError(f"{option}: the reference of style {ref.code} is no longer stored ({path}); "
                             "run stylize with -i IMAGE again")
        return path

    def codes(self) -> dict[str, dict[str, Any]]:
        """Every stored code and its entry."""
        return self._read()
