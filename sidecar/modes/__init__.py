"""Ways to run the data plane: edge gateway (and, later, sidecar)."""
