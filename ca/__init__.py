"""The Weft certificate authority (arrives with the identity work)."""
