"""Model folders: local loading, device/dtype policy, the tiny random models."""
