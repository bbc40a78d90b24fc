"""The HTTP edge: routes, OpenAI surface, auth, gate, bad input, liveness."""
