"""Tiny random Z-Image and Qwen3-VL model folders, built offline and deterministically in seconds.

``make_tiny(DIR)`` writes

* ``DIR/zimage/``  — a diffusers ``ZImagePipeline`` folder: transformer, vae, scheduler (shift 3.0), a Qwen3
  ``text_encoder`` and a tokenizer with a Qwen-style chat template;
* ``DIR/qwen3vl/`` — a transformers Qwen3-VL folder with an image-only processor that loads offline.

Shapes are tiny but keep the real relations: the caption width of the DiT equals the hidden size of both text
models (64 here, 2560 for real), images are cut into 16 px patches merged 2x2 (32 px per VL token), the VAE has four
levels (latents at 1/8, sizes multiples of 16), the Qwen special tokens exist with their real roles, and the VL
text model is deep enough (8 layers) for the default layer -6. Both folders share one tokenizer, as Qwen3-4B and
Qwen3-VL-4B share a vocabulary, so text positions line up between the two encoders.

Everything later loads these folders through the same ``from_pretrained(local_dir)`` code that real weights use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: Hidden width shared by the tiny Qwen3 text encoder, the tiny Qwen3-VL text model and the DiT's caption input.
TINY_HIDDEN = 64
#: Decoder layers of the tiny Qwen3-VL text model (the real 4B has 36; -6 must exist).
TINY_VL_LAYERS = 8
#: Decoder layers of the tiny Qwen3 text encoder (the real Qwen3-4B has 36).
TINY_TEXT_LAYERS = 4

# The pre-tokenizer split used by Qwen2/Qwen3 tokenizers (words, numbers, punctuation, whitespace runs).
_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# A Qwen3-style chat template: string content (Z-Image prompt encoding) and list content with image / text items
# (Qwen3-VL). ``enable_thinking=False`` adds the empty think block, as the real Qwen3 template does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

_CORPUS = [
    "a red fox jumps over the lazy dog in the snow",
    "a photo of a cat sitting on a mat, studio lighting, watercolor painting",
    "portrait of an astronaut riding a horse on the moon, oil on canvas",
    "describe this image in detail: colors, style, mood and composition",
    "user assistant system homer simpson anime girl landscape",
]


def build_tokenizer():
    """A byte-level BPE (every byte covered, so nothing is unknown) wrapped in the real ``Qwen2Tokenizer`` class."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) for m in model["merges"]]  # the tokenizers backend wants tuples
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _zimage_components(tokenizer, width: int = TINY_HIDDEN) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=width,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=width // 32,  # head dim 32 = sum(axes_dims)
        n_kv_heads=width // 32,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=width,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 12, 12],  # sum = dim // n_heads
        axes_lens=[1536, 512, 512],  # the real Turbo values: caption axis holds 1504 positions after padding
    )
    with torch.no_grad():  # pad tokens start uninitialised; pin them so the model is deterministic
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)

    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 32, 32, 32],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=128,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)

    torch.manual_seed(2)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=TINY_TEXT_LAYERS,
            num_attention_heads=width // 16,
            num_key_value_heads=width // 32,
            head_dim=16,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    return dict(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler,
                text_encoder=text_encoder.eval(), tokenizer=tokenizer)


def _qwen3vl(tokenizer, width: int = TINY_HIDDEN):
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from engine.models.loading import Qwen3VLImageOnlyProcessor

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=TINY_VL_LAYERS,
            num_attention_heads=width // 16,
            num_key_value_heads=width // 32,
            head_dim=16,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True},
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=width // 2,
            intermediate_size=width,
            num_heads=max(2, width // 64),
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=width,  # = text hidden size, as in the real model (2560)
            num_position_embeddings=2304,
            deepstack_visual_indexes=[0, 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(3)
    model = Qwen3VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32, "longest_edge": 1024 * 1024},
    )
    processor = Qwen3VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    return model, processor


def make_tiny(root: Path | str, *, overwrite: bool = True, width: int = TINY_HIDDEN) -> dict[str, Path]:
    """Write ``root/zimage`` and ``root/qwen3vl``; returns their paths. Deterministic: same bytes every time.

    ``width`` (a multiple of 64; default 64) is the hidden size shared by both text models and the DiT: benchmarks
    use wider models so that torch kernels, not Python overhead, dominate as they do at full size.

    Folders are written under a temporary name and renamed into place, so an interrupted run never leaves a
    half-written model folder that looks complete.
    """
    from diffusers import ZImagePipeline

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {"zimage": root / "zimage", "qwen3vl": root / "qwen3vl"}
    if not overwrite and all((p / ".complete").is_file() for p in out.values()):
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threading is pure overhead
    try:
        tokenizer = build_tokenizer()
        staging = {k: root / f".{k}.partial" for k in out}
        for p in staging.values():
            shutil.rmtree(p, ignore_errors=True)
        if width < 64 or width % 64:
            raise ValueError(f"width must be a multiple of 64; got {width}")
        ZImagePipeline(**_zimage_components(tokenizer, width)).save_pretrained(staging["zimage"])
        model, processor = _qwen3vl(tokenizer, width)
        model.save_pretrained(staging["qwen3vl"])
        processor.save_pretrained(staging["qwen3vl"])
        for key, final in out.items():
            (staging[key] / ".complete").write_text("tiny random model made by engine.models.tiny.make_tiny\n")
            shutil.rmtree(final, ignore_errors=True)
            staging[key].rename(final)
    finally:
        torch.set_num_threads(threads)
    return out


def ensure_tiny(root: Path | str, *, width: int = TINY_HIDDEN) -> dict[str, Path]:
    """Return the tiny model folders under ``root``, building them on first use (the ``--demo`` path)."""
    return make_tiny(root, overwrite=False, width=width)


def resolve_demo(settings: Any, notify: Callable[[str], Any] = print) -> Any:
    """With ``settings.demo`` set, build the tiny models on first use and point both model paths at them, loudly."""
    if not settings.demo:
        return settings
    paths = ensure_tiny(settings.tiny_models_dir)
    notify("*** DEMO MODE: tiny random models, generated images will be NOISE. "
           f"Set ZVL_ZIMAGE_PATH and ZVL_VL_PATH for real weights. (models in {settings.tiny_models_dir}) ***")
    return settings.model_copy(update={"zimage_path": paths["zimage"], "vl_path": paths["qwen3vl"]})
