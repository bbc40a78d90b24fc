"""The work behind every route: the engine, dynamic batching, the cache, classification."""
