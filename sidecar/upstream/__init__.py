"""Upstream clusters: endpoints, load balancing and connection pools."""
