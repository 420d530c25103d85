"""The durable embedding cache: keys of what an extraction depends on, checksummed tensor files, the LRU index."""
