"""The HTTP edge: the app, its routes, middleware, auth, pages and the OpenAI surface."""
