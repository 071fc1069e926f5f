"""Service discovery backends."""
