"""Policy serving: an openpi-compatible websocket server (server.py) and its wire format
(protocol.py). Imports sample/, never train/."""
