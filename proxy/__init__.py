"""Corral's load-balancing HTTP/1.1 reverse proxy (docs/proxy.md)."""
