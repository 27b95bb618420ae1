"""HTTP client side of the driver: transport, SSE parsing, OpenAI request/response handling."""
