"""sslray: self-supervised pre-training on Ray."""

__version__ = "0.1.0"
