"""Observability: metrics and access logs."""
