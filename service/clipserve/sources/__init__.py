"""Where bytes come from: image URLs, weight files, tokenizer files, and their limits."""
