"""The driver process: the load schedule, session dispatch and the HTTP client (one core, timing first)."""
