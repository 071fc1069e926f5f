"""Opaque TCP: relays, TCP routes and protocol detection."""
