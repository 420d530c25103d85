"""Start-up checks of the configured model folders: one line naming the setting, before any weights load.

Used by the bot at start-up and by the CLI before a run. ``--demo`` settings are checked after the tiny models are
built (:func:`engine.models.tiny.resolve_demo`).
"""

from __future__ import annotations

from typing import Any

from engine.config import SettingsError
from engine.models.loading import check_vl_folder, check_zimage_folder, vl_min_image_tokens

__all__ = ["check_model_folders"]


def check_model_folders(settings: Any) -> None:
    """Fail with :class:`SettingsError` when a model folder is missing, the VL layer is beyond the model's depth, or
    the image-token budget is below what the VL processor gives any image."""
    if settings.zimage_path is None:
        raise SettingsError("zimage_path (ZVL_ZIMAGE_PATH) is not set: point it at a Z-Image-Turbo diffusers folder, "
                            "or run with --demo for tiny random models")
    try:
        check_zimage_folder(settings.zimage_path)
    except ValueError as exc:
        raise SettingsError(f"zimage_path (ZVL_ZIMAGE_PATH): {exc}") from None
    if settings.vl_path is not None:
        _check_vl_folder(settings)


def _check_vl_folder(settings: Any) -> None:
    try:
        cfg = check_vl_folder(settings.vl_path)
    except ValueError as exc:
        raise SettingsError(f"vl_path (ZVL_VL_PATH): {exc}") from None
    depth = int(cfg.get("text_config", cfg).get("num_hidden_layers", 0))
    if depth and -settings.hidden_layer > depth:
        raise SettingsError(f"invalid setting hidden_layer (ZVL_HIDDEN_LAYER): {settings.hidden_layer} is beyond "
                            f"the depth of {settings.vl_path} ({depth} layers; use -1 .. -{depth})")
    least = vl_min_image_tokens(settings.vl_path)  # the processor never gives an image fewer tokens than this
    if settings.vl_max_image_tokens < least:
        raise SettingsError(f"invalid setting vl_max_image_tokens (ZVL_VL_MAX_IMAGE_TOKENS): the Qwen3-VL processor "
                            f"in {settings.vl_path} gives every image at least {least} tokens; got "
                            f"{settings.vl_max_image_tokens}")
