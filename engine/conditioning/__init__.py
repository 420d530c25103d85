"""From prompt and reference to a caption: Qwen3 text embeddings, Qwen3-VL hidden states, blending and sequence fitting."""
