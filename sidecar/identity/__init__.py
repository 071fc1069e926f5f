"""The sidecar's own identity: its key, its SVID, renewal, and trust in the control plane."""
