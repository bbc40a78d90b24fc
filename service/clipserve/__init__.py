"""clipserve: CLIP embeddings and ranking over HTTP, with dynamic batching."""

__version__ = "0.1.0"
