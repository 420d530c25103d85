"""Per-user defaults, the parameter validation shared with presets, and :func:`resolve_params`.

Effective settings for a request are resolved key by key: the request, then the user's defaults, then the server
preset in use, then the global defaults; ``None`` anywhere means "not set here". ``style_weight`` and ``alpha`` are
two spellings of one setting (``engine.types.style_weight_to_alpha``), so they resolve together: the first layer that
sets either decides both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any

import aiosqlite

from bot.store.db import fetch_one, from_json, to_db_time, to_json, transaction, utcnow
from engine.limits import LIMITS
from engine.types import (
    AppendSelection,
    BlendMode,
    FitMode,
    LayerWeight,
    Normalization,
    OutlierDirection,
    OutlierMode,
    StyleSchedule,
    StylizeRequest,
    TokenMode,
    alpha_to_style_weight,
    style_weight_to_alpha,
)

Validator = Callable[[Any, str], Any]


def _limited(key: str) -> Validator:
    """The check of ``engine.limits.LIMITS[key]`` (the same bounds the commands and the engine apply)."""
    bound = LIMITS[key]

    def check(value: Any, name: str) -> Any:
        return bound.check(value, name)

    return check


def _choice(enum: type[Enum]) -> Validator:
    def check(value: Any, name: str) -> str:
        return enum.parse(value, name).value  # type: ignore[attr-defined]

    return check


def _layer(value: Any, name: str) -> int | list[list[float]]:
    """One layer (``-6``) or a weighted mix: a list of ``LayerWeight`` / ``[layer, weight]`` pairs."""
    check_layer, check_weight = _limited("layer"), _limited("layer_weight")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must name at least one layer")
        pairs = []
        for item in value:
            layer, weight = (item.layer, item.weight) if isinstance(item, LayerWeight) else _pair(item, name)
            pairs.append([check_layer(layer, name), check_weight(weight, f"{name} weight")])
        return pairs
    return check_layer(value, name)


def _pair(item: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise ValueError(f"{name} entries must be [layer, weight] pairs; got {item!r}")
    return item[0], item[1]


def _seed(value: Any, name: str) -> str | int:
    if isinstance(value, str) and value.strip().lower() == "random":
        return "random"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be 'random' or a whole number; got {value!r}")
    return LIMITS["seed"].check(value, name)  # type: ignore[no-any-return]


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")
    return value


#: Every parameter a user default or a preset may hold, with its validator (which also normalises the value).
PARAM_SPECS: dict[str, Validator] = {
    "style_weight": _limited("style_weight"),
    "alpha": _limited("alpha"),
    "blend_mode": _choice(BlendMode),
    "layer": _layer,
    "tokens": _choice(TokenMode),
    "normalization": _choice(Normalization),
    "target_std": _limited("target_std"),
    "outlier_mode": _choice(OutlierMode),
    "outlier_threshold": _limited("outlier_threshold"),
    "outlier_direction": _choice(OutlierDirection),
    "append_tokens": _limited("append_tokens"),
    "fit_mode": _choice(FitMode),
    "style_schedule": _choice(StyleSchedule),
    "append_selection": _choice(AppendSelection),
    "steps": _limited("steps"),
    "width": _limited("width"),
    "height": _limited("height"),
    "seed": _seed,
    "guidance_scale": _limited("guidance_scale"),
    "shift": _limited("shift"),
    "private": _flag,
}

#: Keys a user may store as personal defaults (``/defaults set``).
USER_DEFAULT_KEYS: frozenset[str] = frozenset(
    {"style_weight", "alpha", "blend_mode", "layer", "tokens", "normalization", "outlier_mode", "steps", "width",
     "height", "seed", "private", "style_schedule", "append_selection"}
)  # fmt: skip

#: Keys a server preset may hold: every generation parameter (``private`` is a per-user choice).
PRESET_KEYS: frozenset[str] = frozenset(PARAM_SPECS) - {"private"}

#: Resolved together: whichever layer sets one of them decides both.
STRENGTH_KEYS = ("style_weight", "alpha")


def validate_params(params: Mapping[str, Any], allowed: Iterable[str], what: str = "parameter") -> dict[str, Any]:
    """Check and normalise ``params`` (enums to their values, layer mixes to ``[[layer, weight], ...]``).

    ``None`` values are kept as ``None`` ("not set"). An unknown key, a bad value, or both ``style_weight`` and
    ``alpha`` set raise ``ValueError`` naming the key.
    """
    allowed = frozenset(allowed)
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(f"unknown {what} {key!r}; allowed: {', '.join(sorted(allowed))}")
        out[key] = None if value is None else PARAM_SPECS[key](value, key)
    if all(out.get(k) is not None for k in STRENGTH_KEYS):
        raise ValueError("set style_weight or alpha, not both (they are one setting)")
    return out


def global_defaults() -> dict[str, Any]:
    """The built-in defaults, taken from :class:`engine.types.StylizeRequest` so they cannot drift."""
    request = StylizeRequest().record()
    out = {key: request[key] for key in PARAM_SPECS if key in request}
    out.update(style_weight=alpha_to_style_weight(request["alpha"]), layer=request["hidden_layer"])
    out.update(seed="random", private=False)
    return out


def resolve_params(
    request: Mapping[str, Any],
    user: Mapping[str, Any] | None,
    preset: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """Effective parameters: per key, the first of request > user default > preset > global default that is not
    ``None``. Keys set nowhere are left out. ``style_weight``/``alpha`` resolve as one setting and both are filled
    in (the missing one through the documented mapping). Pure: the inputs are not modified and values are copied.
    """
    layers = [request, user or {}, preset or {}, defaults]
    keys: dict[str, None] = {}
    for layer in reversed(layers):
        keys.update(dict.fromkeys(layer))
    out: dict[str, Any] = {}
    for key in keys:
        if key in STRENGTH_KEYS:
            continue
        value = next((layer[key] for layer in layers if layer.get(key) is not None), None)
        if value is not None:
            out[key] = copy.deepcopy(value)
    for layer in layers:
        weight, alpha = layer.get("style_weight"), layer.get("alpha")
        if weight is None and alpha is None:
            continue
        out["style_weight"] = float(weight) if weight is not None else alpha_to_style_weight(alpha)
        out["alpha"] = float(alpha) if alpha is not None else style_weight_to_alpha(weight)
        break
    return out


class UserDefaults:
    """Per-user defaults in ``user_defaults`` (one JSON object per user; only the keys the user set)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def get(self, user_id: int) -> dict[str, Any]:
        """The user's stored defaults (``{}`` when none)."""
        row = await fetch_one(self.conn, "SELECT settings FROM user_defaults WHERE user_id = ?", (user_id,))
        return {} if row is None else from_json(row["settings"], {})

    async def set(self, user_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Partial update: set the keys in ``changes``, remove those given as ``None``; returns the new defaults.

        Setting ``style_weight`` removes a stored ``alpha`` and vice versa. Unknown keys or bad values raise
        ``ValueError`` and change nothing.
        """
        checked = validate_params(changes, USER_DEFAULT_KEYS, what="default")
        async with transaction(self.conn):
            current = await self.get(user_id)
            for key, value in checked.items():
                if value is None:
                    current.pop(key, None)
                    continue
                if key in STRENGTH_KEYS:
                    for other in STRENGTH_KEYS:
                        current.pop(other, None)
                current[key] = value
            await self._write(user_id, current)
        return current

    async def reset(self, user_id: int, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """Forget the given keys (all of them when ``keys`` is ``None``); returns what remains."""
        if keys is None:
            async with transaction(self.conn):
                await self.conn.execute("DELETE FROM user_defaults WHERE user_id = ?", (user_id,))
            return {}
        return await self.set(user_id, dict.fromkeys(keys))

    async def _write(self, user_id: int, settings: dict[str, Any]) -> None:
        if not settings:
            await self.conn.execute("DELETE FROM user_defaults WHERE user_id = ?", (user_id,))
            return
        await self.conn.execute(
            "INSERT INTO user_defaults (user_id, settings, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
            (user_id, to_json(settings), to_db_time(utcnow())),
        )
