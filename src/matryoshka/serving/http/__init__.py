"""HTTP plumbing of the server: the uvicorn protocol, middleware and OpenAI-shaped errors."""
