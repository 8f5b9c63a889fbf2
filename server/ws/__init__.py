"""The WebSocket surface: the endpoint, each socket's send path, presence fan-out."""
