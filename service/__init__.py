"""streamnorm's service: HTTP API, Redis store, stream worker and CLI (being built)."""
