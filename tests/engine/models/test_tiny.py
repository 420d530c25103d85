"""The tiny-model factory: real HF folder layouts, loaded back with from_pretrained, deterministic."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from engine.models.tiny import TINY_HIDDEN, TINY_VL_LAYERS


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_zimage_folder_loads_with_from_pretrained_and_generates(tiny_models):
    from diffusers import ZImagePipeline

    index = json.loads((tiny_models.zimage / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert set(index) >= {"transformer", "vae", "scheduler", "text_encoder", "tokenizer"}
    pipe = ZImagePipeline.from_pretrained(tiny_models.zimage, local_files_only=True)
    assert pipe.scheduler.config.shift == 3.0 and not pipe.scheduler.config.use_dynamic_shifting
    assert pipe.transformer.config.cap_feat_dim == pipe.text_encoder.config.hidden_size == TINY_HIDDEN
    assert list(pipe.transformer.config.axes_lens) == [1536, 512, 512]
    rendered = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a fox"}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=True)
    assert rendered == "<|im_start|>user\na fox<|im_end|>\n<|im_start|>assistant\n"
    image = pipe("a fox", height=32, width=48, num_inference_steps=1, guidance_scale=0.0,
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (48, 32)


def test_qwen3vl_folder_loads_offline_with_the_image_only_processor(tiny_models):
    from transformers import Qwen3VLForConditionalGeneration

    from engine.models.loading import load_vl_processor, vl_num_layers

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_models.qwen3vl, local_files_only=True)
    processor = load_vl_processor(tiny_models.qwen3vl)
    assert vl_num_layers(tiny_models.qwen3vl) == TINY_VL_LAYERS
    cfg = model.config
    assert cfg.text_config.hidden_size == cfg.vision_config.out_hidden_size == TINY_HIDDEN
    assert (cfg.vision_config.patch_size, cfg.vision_config.spatial_merge_size) == (16, 2)
    tok = processor.tokenizer
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a fox"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (128, 64))], return_tensors="pt")
    # 16 px patches merged 2x2: 32 px per token -> a 128x64 image gives 4 x 2 = 8 image tokens.
    assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == 8
    assert "mm_token_type_ids" in inputs
    with torch.no_grad():
        out = model.model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == TINY_VL_LAYERS + 1


def test_both_folders_share_one_tokenizer(tiny_models):
    z = json.loads((tiny_models.zimage / "tokenizer" / "tokenizer.json").read_text())
    v = json.loads((tiny_models.qwen3vl / "tokenizer.json").read_text())
    assert z["model"]["vocab"] == v["model"]["vocab"]


def test_make_tiny_cli_is_deterministic(tmp_path: Path, tiny_models):
    """`python -m engine make-tiny DIR` writes byte-identical folders on every run."""
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "engine", "make-tiny", str(tmp_path / "a")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "zimage" / "model_index.json").is_file()
    assert _digest(tmp_path / "a") == _digest(tiny_models.root)
