"""The engine's settings (models, devices, generation defaults, queue limits), read by the CLI and the worker.

The bot's settings (``bot.settings.BotSettings``) extend these with the Discord ones: token, endpoints, guild,
admin role, owners, cooldown, upload limit, retention, sweep size. Both read the same sources with the same names.

Precedence, highest first: CLI flags (passed to :func:`load_settings` as ``overrides``) > environment variables and
``.env`` (prefix ``ZVL_``) > the selected profile of a TOML file > the defaults below. The defaults follow the seed's
corrected guidance: VL hidden layer -6, the full token sequence, alpha 0.3, 9 steps, CFG 0, scheduler shift 3.0,
1024x1024.

The TOML file (``ZVL_CONFIG`` / ``--config``) holds named profiles in the seed's ``config.toml`` shape; the profile is
chosen by ``ZVL_PROFILE`` / ``--profile`` (default ``default``)::

    [default]
    steps = 9
    [default.vl]
    model_path = "/models/Qwen3-VL-4B-Instruct"
    device = "auto"
    default_alpha = 0.3
    default_hidden_layer = -6
    text_tokens_only = false
    auto_unload = false

Top-level keys of a profile are setting names (``zimage_path``, ``steps``, ...); the ``vl`` sub-table uses the seed's
names, mapped by :data:`VL_TABLE_KEYS`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from engine.limits import LIMITS
from engine.types import AppendSelection, BlendMode, FitMode, Normalization, OutlierMode, StyleSchedule, TokenMode

def _bounded(default: Any, key: str, description: str) -> Any:
    """A ``Field`` whose bounds are ``engine.limits.LIMITS[key]`` (so a setting can't hold what a request refuses)."""
    bound = LIMITS[key]
    low = {"gt": bound.lo} if bound.lo_open else {"ge": bound.lo}
    return Field(default, **low, le=bound.hi, description=description)


#: The seed's ``[profile.vl]`` keys and the settings they set.
VL_TABLE_KEYS = {
    "model_path": "vl_path",
    "device": "vl_device",
    "default_alpha": "alpha",
    "default_hidden_layer": "hidden_layer",
    "auto_unload": "vl_auto_unload",
    "target_std": "target_std",
    "max_image_tokens": "vl_max_image_tokens",
}


class SettingsError(Exception):
    """A setting is invalid. ``str()`` is one line naming the setting, fit to print as it is."""


def default_data_dir() -> Path:
    """The user's data folder (``$XDG_DATA_HOME/zvl-bot``, else ``~/.local/share/zvl-bot``), not the checkout."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zvl-bot"


def parse_device(value: str, name: str = "device") -> str:
    """Validate ``auto | cpu | cuda | cuda:N`` (case-insensitive); returns the normalised string.

    Lives here, not in the torch-importing ``engine.models.loading``, so validating settings stays cheap.
    """
    v = str(value).strip().lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    prefix = f"{name} " if name else ""  # settings validators pass "": the error line already names the setting
    raise ValueError(f"{prefix}must be auto, cpu, cuda or cuda:N; got {value!r}")


class _TomlProfileSource(PydanticBaseSettingsSource):
    """Reads the selected profile of the TOML file named by ``config_file`` (from CLI flags, env or .env)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - the whole mapping is built in __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        state = self.current_state  # what higher-priority sources (CLI flags, env, .env) have set
        path = state.get("config_file")
        if not path:
            return {}
        path = Path(path).expanduser()
        profile = state.get("profile") or "default"
        if not path.is_file():
            raise SettingsError(f"config_file: {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config_file: cannot read {path}: {exc}") from None
        if profile not in data or not isinstance(data[profile], dict):
            names = ", ".join(k for k, v in data.items() if isinstance(v, dict)) or "none"
            raise SettingsError(f"profile: {profile!r} is not a table in {path} (profiles there: {names})")
        return profile_to_settings(data[profile], where=f"{path} [{profile}]")


def profile_to_settings(table: dict[str, Any], where: str = "profile") -> dict[str, Any]:
    """Flatten one TOML profile (with its seed-style ``vl`` sub-table) into setting names."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "vl" and isinstance(value, dict):
            for vkey, vvalue in value.items():
                if vkey == "text_tokens_only":
                    out["tokens"] = "text" if vvalue else "full"
                elif vkey in VL_TABLE_KEYS:
                    out[VL_TABLE_KEYS[vkey]] = vvalue
                else:
                    raise SettingsError(f"{where}: unknown key vl.{vkey}")
        elif isinstance(value, dict):
            raise SettingsError(f"{where}: unknown table [{key}]")
        else:
            out[key] = value
    return out


class EngineSettings(BaseSettings):
    """The engine's settings. Environment names are the field names upper-cased with the ``ZVL_`` prefix.

    Keys that are not the engine's (the bot's, in a shared ``.env`` or TOML profile) are ignored here; the bot's
    :class:`bot.settings.BotSettings` knows every key and refuses unknown ones.
    """

    model_config = SettingsConfigDict(
        env_prefix="ZVL_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # a copied .env.example leaves optional settings empty: empty means "not set"
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,  # a bad token must not be echoed back in a validation error
    )

    # --- where things are -------------------------------------------------------------------------------------
    config_file: Path | None = Field(None, description="TOML file with named profiles")
    profile: str = Field("default", description="profile (table) of config_file to use")
    data_dir: Path = Field(default_factory=default_data_dir, description="caches, tiny models, results")
    db_path: Path | None = Field(None, description="SQLite database (default: data_dir/zvl.sqlite3)")
    zimage_path: Path | None = Field(None, description="Z-Image-Turbo diffusers folder")
    vl_path: Path | None = Field(None, description="Qwen3-VL-4B-Instruct folder")
    demo: bool = Field(False, description="use tiny random models generated into data_dir (images are noise)")

    # --- devices ------------------------------------------------------------------------------------------------
    device: str = Field("auto", description="DiT device: auto | cpu | cuda[:n]")
    vl_device: str = Field("auto", description="Qwen3-VL device: auto (GPU when it has room, else CPU) | cpu | cuda[:n]")
    text_device: str = Field("auto", description="Qwen3 text-encoder device: auto (with the DiT) | cpu | cuda[:n]")
    dtype: str = Field("auto", description="auto | bfloat16 | float32 | float16")
    cpu_threads: int | None = Field(None, ge=1, le=512, description="torch threads for CPU work (default: all cores)")
    vl_auto_unload: bool = Field(False, description="unload Qwen3-VL after each extraction (24 GB cards)")
    vl_idle_unload_s: float = Field(600.0, ge=0, description="unload Qwen3-VL after this many idle seconds (0 = never)")
    vl_max_image_tokens: int = Field(1024, ge=4, le=4096, description="cap on a reference's image tokens")
    preload: bool = Field(True, description="load the models (and run compile/FP8 warm-ups) at start-up, not on the "
                                            "first request")
    compile: bool = Field(False, description="regional torch.compile of the DiT (warmed up at start-up)")
    fp8: bool = Field(False, description="FP8 dynamic quantisation of the DiT (needs torchao)")

    # --- generation defaults --------------------------------------------------------------------------------------
    alpha: float = _bounded(0.3, "alpha", "blend strength of the reference")
    blend_mode: BlendMode = Field(BlendMode.POOL, description="how VL states are blended into the prompt")
    hidden_layer: int = _bounded(-6, "layer", "Qwen3-VL hidden layer, counted from the end")
    tokens: TokenMode = Field(TokenMode.FULL, description="which VL positions to keep")
    normalization: Normalization = Field(Normalization.ROW_RMS, description="VL rescaling towards text statistics")
    target_std: float = _bounded(61.0, "target_std", "std the global normalisation scales VL states to")
    outlier_mode: OutlierMode = Field(OutlierMode.NONE, description="outlier-dimension masking")
    outlier_threshold: float = _bounded(10.0, "outlier_threshold", "std-ratio threshold for outlier masking")
    append_tokens: int = _bounded(64, "append_tokens", "pooled image tokens appended by blend mode 'append'")
    fit_mode: FitMode = Field(FitMode.POOL, description="how captions over 1504 positions are shortened")
    style_schedule: StyleSchedule = Field(StyleSchedule.CONSTANT, description="the reference's share over the "
                                          "denoising steps: constant | early | late | ramp | ramp_down")
    append_selection: AppendSelection = Field(AppendSelection.POOL, description="the image rows blend mode "
                                              "'append' adds: pool (2-D area pools) | attention (the rows the prompt "
                                              "attends to)")
    steps: int = _bounded(9, "steps", "denoising steps")
    guidance_scale: float = _bounded(0.0, "guidance_scale", "CFG scale (0 = off, as Turbo expects)")
    shift: float = _bounded(3.0, "shift", "flow-matching scheduler shift")
    width: int = _bounded(1024, "width", "output width (multiple of 16)")
    height: int = _bounded(1024, "height", "output height (multiple of 16)")

    # --- queue and limits -------------------------------------------------------------------------------------
    max_jobs_per_user: int = Field(3, ge=1, le=100, description="queued + running jobs per user")
    max_jobs_total: int = Field(50, ge=1, le=10000, description="queued + running jobs in all")
    job_timeout_s: float = Field(600.0, gt=0, description="a job running longer than this fails")
    max_reference_pixels: int = Field(40_000_000, ge=1 << 16, description="largest decoded reference (bomb guard)")
    cache_max_bytes: int = Field(2 << 30, ge=0, description="embedding cache budget on disk (LRU)")
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")

    # --- several GPU workers (Redis) ------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis of the shared job queue (redis://, rediss:// or "
                                                    "unix://); unset = the in-process queue and worker")
    cache_redis_url: str | None = Field(None, description="Redis of the shared embedding-cache tier (allkeys-lru); "
                                                          "unset = each worker's local cache only")
    redis_namespace: str = Field("q", pattern=r"^[A-Za-z0-9_-]{1,32}$",
                                 description="key namespace in the queue Redis (several fleets on one server)")
    redis_lease_s: float = Field(30.0, gt=0, le=3600, description="a worker silent this long loses its jobs "
                                                                   "(heartbeats every lease/6)")
    redis_max_attempts: int = Field(2, ge=1, le=10, description="a job whose worker was lost this many times fails")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings, dotenv_settings, _TomlProfileSource(settings_cls), file_secret_settings)

    @field_validator("device", "vl_device", "text_device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        return parse_device(v, name="")

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v: str) -> str:
        v = str(v).strip().lower()
        if v not in ("auto", "bfloat16", "float32", "float16"):
            raise ValueError(f"must be auto, bfloat16, float32 or float16; got {v!r}")
        return v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        multiple = LIMITS["width"].multiple_of
        if v % multiple:
            raise ValueError(f"must be a multiple of {multiple}; got {v}")
        return v

    @field_validator("redis_url", "cache_redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        v = str(v).strip().upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR; got {v!r}")
        return v

    @model_validator(mode="after")
    def _derive(self) -> EngineSettings:
        if self.db_path is None:
            self.db_path = self.data_dir / "zvl.sqlite3"
        return self

    # --- derived -------------------------------------------------------------------------------------------------
    @property
    def tiny_models_dir(self) -> Path:
        return self.data_dir / "tiny-models"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def _error_line(exc: ValidationError) -> str:
    """One line for the first error: ``invalid setting alpha (ZVL_ALPHA): must be <= 1``."""
    err = exc.errors(include_input=False, include_url=False)[0]
    name = ".".join(str(p) for p in err.get("loc", ())) or "settings"
    msg = err.get("msg", "invalid value")
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return f"unknown setting {name!r}"
    more = len(exc.errors()) - 1
    tail = f" (and {more} more invalid setting{'s' if more > 1 else ''})" if more else ""
    return f"invalid setting {name} (ZVL_{name.upper()}): {msg}{tail}"


def build_settings(cls: type[EngineSettings], overrides: dict[str, Any] | None = None, *,
                   env_file: str | Path | None = ".env") -> Any:
    """Build settings of ``cls`` from CLI ``overrides`` (None values ignored), env/.env, the TOML profile, defaults.

    Raises :class:`SettingsError` with one printable line on any invalid value.
    """
    kwargs = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return cls(_env_file=env_file, **kwargs)
    except ValidationError as exc:
        raise SettingsError(_error_line(exc)) from None


def load_settings(overrides: dict[str, Any] | None = None, *, env_file: str | Path | None = ".env") -> EngineSettings:
    """The engine's settings (see :func:`build_settings`)."""
    return build_settings(EngineSettings, overrides, env_file=env_file)
