"""The engine: batching, its policy, the cache, classification."""
