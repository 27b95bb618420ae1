"""The built-in simulated OpenAI-compatible server (a real HTTP server process) and its engine model."""
