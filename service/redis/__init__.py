"""Redis: the one layer that knows keys (``keys``) and Lua scripts (``store``, ``streams``)."""
