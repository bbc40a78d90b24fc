"""Sources of bytes: image URLs, weight downloads, tokenizers, redaction."""
