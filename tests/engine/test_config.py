"""engine.config: precedence (CLI > env/.env > TOML profile > defaults), invalid values; the start-up folder checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.config import EngineSettings, SettingsError, load_settings
from engine.models.folders import check_model_folders
from engine.models.tiny import resolve_demo
from engine.types import BlendMode, TokenMode

PROFILES = """
[default]
steps = 7
width = 512
[default.vl]
model_path = "/models/qwen3vl"
device = "cpu"
default_alpha = 0.4
default_hidden_layer = -8
text_tokens_only = true
auto_unload = true

[rtx4090]
steps = 5
[rtx4090.vl]
default_alpha = 0.5
"""


pytestmark = pytest.mark.usefixtures("settings_sandbox")


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(PROFILES)
    return path


def test_defaults_follow_the_corrected_guidance():
    """Layer -6, full tokens, alpha 0.3, 9 steps, CFG 0, shift 3.0, 1024x1024, VL device auto."""
    s = load_settings()
    assert (s.hidden_layer, s.tokens, s.alpha, s.steps) == (-6, TokenMode.FULL, 0.3, 9)
    assert (s.guidance_scale, s.shift, s.width, s.height, s.vl_device) == (0.0, 3.0, 1024, 1024, "auto")


def test_data_dir_is_the_users_data_folder_and_db_lives_inside(tmp_path: Path):
    s = load_settings()
    assert s.data_dir == tmp_path / "xdg" / "zvl-bot"
    assert s.db_path == s.data_dir / "zvl.sqlite3"


def test_toml_profile_maps_the_seed_vl_table(toml_file: Path):
    s = load_settings({"config_file": toml_file})
    assert s.steps == 7 and s.width == 512
    assert s.vl_path == Path("/models/qwen3vl") and s.vl_device == "cpu"
    assert s.alpha == 0.4 and s.hidden_layer == -8 and s.tokens == TokenMode.TEXT and s.vl_auto_unload is True


def test_profile_selected_by_env(toml_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ZVL_CONFIG_FILE", str(toml_file))
    monkeypatch.setenv("ZVL_PROFILE", "rtx4090")
    s = load_settings()
    assert (s.steps, s.alpha, s.width) == (5, 0.5, 1024)


def test_precedence_cli_over_env_over_profile_over_default(toml_file: Path, monkeypatch: pytest.MonkeyPatch):
    overrides = {"config_file": toml_file}
    assert load_settings(overrides).steps == 7  # profile beats default (9)
    monkeypatch.setenv("ZVL_STEPS", "4")
    assert load_settings(overrides).steps == 4  # env beats profile
    assert load_settings({**overrides, "steps": 3}).steps == 3  # CLI beats env
    assert load_settings({**overrides, "steps": None}).steps == 4  # an unset CLI flag does not override


def test_dotenv_is_read_and_env_beats_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / ".env").write_text("ZVL_BLEND_MODE=append\nZVL_STEPS=6\n")
    s = load_settings()
    assert s.blend_mode == BlendMode.APPEND and s.steps == 6
    monkeypatch.setenv("ZVL_STEPS", "2")
    assert load_settings().steps == 2


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"alpha": 1.7}, "invalid setting alpha (ZVL_ALPHA)"),
        ({"alpha": -0.1}, "invalid setting alpha (ZVL_ALPHA)"),
        ({"hidden_layer": 3}, "invalid setting hidden_layer (ZVL_HIDDEN_LAYER)"),
        ({"vl_device": "tpu"}, "invalid setting vl_device (ZVL_VL_DEVICE): must be auto, cpu, cuda or cuda:N"),
        ({"device": "cuda:x"}, "invalid setting device (ZVL_DEVICE)"),
        ({"width": 1000}, "invalid setting width (ZVL_WIDTH): must be a multiple of 16"),
        ({"steps": 0}, "invalid setting steps (ZVL_STEPS)"),
        ({"blend_mode": "magic"}, "invalid setting blend_mode (ZVL_BLEND_MODE)"),
        ({"tokens": "all"}, "invalid setting tokens (ZVL_TOKENS)"),
        ({"outlier_threshold": 0.5}, "invalid setting outlier_threshold (ZVL_OUTLIER_THRESHOLD)"),
        ({"dtype": "int4"}, "invalid setting dtype (ZVL_DTYPE)"),
        ({"log_level": "LOUD"}, "invalid setting log_level (ZVL_LOG_LEVEL)"),
        ({"config_file": "/nope/config.toml"}, "config_file: /nope/config.toml does not exist"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_setting(overrides, needle):
    with pytest.raises(SettingsError) as info:
        load_settings(overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and "Traceback" not in message


def test_unknown_profile_lists_the_profiles(toml_file: Path):
    with pytest.raises(SettingsError, match=r"profile: 'big' is not a table .*default, rtx4090"):
        load_settings({"config_file": toml_file, "profile": "big"})


def test_unknown_vl_key_in_profile_is_refused(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[default.vl]\nmodel_pth = '/x'\n")
    with pytest.raises(SettingsError, match="unknown key vl.model_pth"):
        load_settings({"config_file": path})


def test_missing_model_folders_fail_clearly(tmp_path: Path):
    with pytest.raises(SettingsError, match=r"zimage_path \(ZVL_ZIMAGE_PATH\) is not set"):
        check_model_folders(load_settings())
    with pytest.raises(SettingsError, match=r"zimage_path \(ZVL_ZIMAGE_PATH\): Z-Image folder .* does not exist"):
        check_model_folders(load_settings({"zimage_path": tmp_path / "missing"}))


def test_layer_beyond_model_depth_fails_at_startup(tiny_models):
    ok = load_settings({"zimage_path": tiny_models.zimage, "vl_path": tiny_models.qwen3vl, "hidden_layer": -8})
    check_model_folders(ok)  # the tiny VL model has 8 layers: -8 is the deepest valid layer
    bad = ok.model_copy(update={"hidden_layer": -9})
    with pytest.raises(SettingsError, match=r"hidden_layer \(ZVL_HIDDEN_LAYER\): -9 is beyond the depth .*8 layers"):
        check_model_folders(bad)


def test_image_token_budget_below_the_processors_minimum_fails_at_startup(tiny_models, vl_with_real_minimum):
    """Qwen3-VL-4B's processor never gives an image fewer than 64 tokens: a smaller budget fails at start-up,
    naming the setting, instead of at the first extraction."""
    from engine.models.loading import load_vl_processor

    processor = load_vl_processor(vl_with_real_minimum)  # the real processor, on the smallest image there is
    grid = processor.image_processor(images=[Image.new("RGB", (1, 1))], return_tensors="pt")["image_grid_thw"]
    assert int(grid.prod()) // 4 == 64
    ok = load_settings({"zimage_path": tiny_models.zimage, "vl_path": vl_with_real_minimum,
                        "vl_max_image_tokens": 64})
    check_model_folders(ok)
    with pytest.raises(SettingsError, match=r"vl_max_image_tokens \(ZVL_VL_MAX_IMAGE_TOKENS\): .* at least 64 "
                                            r"tokens; got 63"):
        check_model_folders(ok.model_copy(update={"vl_max_image_tokens": 63}))


def test_demo_builds_tiny_models_and_says_so_loudly(tmp_path: Path):
    notices: list[str] = []
    s = resolve_demo(load_settings({"demo": True, "data_dir": tmp_path / "data"}), notify=notices.append)
    assert (s.zimage_path / "model_index.json").is_file() and (s.vl_path / "config.json").is_file()
    assert len(notices) == 1 and "NOISE" in notices[0]
    check_model_folders(s)


def test_the_bots_keys_in_a_shared_env_file_do_not_stop_the_engine(tmp_path: Path):
    """The CLI reads the same .env as the bot: the bot's keys are not the engine's business (the bot checks them)."""
    (tmp_path / ".env").write_text("ZVL_DISCORD_TOKEN=abc\nZVL_COOLDOWN_S=5\nZVL_STEPS=4\n")
    s = load_settings()
    assert s.steps == 4 and not hasattr(s, "discord_token") and not hasattr(s, "cooldown_s")


def test_engine_settings_have_a_description_for_every_field():
    missing = [name for name, field in EngineSettings.model_fields.items() if not field.description]
    assert missing == []
