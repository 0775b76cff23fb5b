"""The HTTP edge: the FastAPI app, its routes, access keys, and the map from engine errors to
statuses. The only layer that knows HTTP."""
