"""streamnorm's service: the HTTP API, the engine, Redis, the stream worker and the command line."""
