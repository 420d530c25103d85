"""The Z-Image side: the StylePipeline, the diffusers generator, optional compile/FP8."""
