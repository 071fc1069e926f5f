"""HTTP request handling: routing, filters and forwarding."""
