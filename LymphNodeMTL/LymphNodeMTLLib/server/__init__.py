"""The inference server: the engine resident in its own process behind a small HTTP API."""
