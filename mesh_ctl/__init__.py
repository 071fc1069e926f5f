"""The Weft control plane and the meshctl CLI."""
