"""zvl-bot's engine: Qwen3-VL reference extraction, blending into Qwen3 prompt embeddings, Z-Image generation.

This package never imports discord. Heavy modules (torch, diffusers, transformers) are imported by the submodules
that need them, so ``import engine`` stays cheap.
"""
