"""Serving jobs: the fair queue, the two-stage EngineWorker, progress events and user-facing failure messages."""
