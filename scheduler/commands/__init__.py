"""One module per CLI noun; each exposes ``register(subparsers)``."""
