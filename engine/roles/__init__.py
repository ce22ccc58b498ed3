"""The engine's processes wired from config: the receiver role, the worker role, serve's supervisor, shutdown, memory."""
