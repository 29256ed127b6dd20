"""HTTP plumbing of the server: the header deadline (a uvicorn protocol), middleware, OpenAI-shaped errors."""
