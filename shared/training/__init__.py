"""Training of bottleneck ladders: frozen-backbone caching, objectives, and the ladder loop."""
