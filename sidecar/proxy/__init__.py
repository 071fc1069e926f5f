"""The forward proxy: a listener for clients that use Weft as their proxy (HTTP_PROXY,
HTTPS_PROXY), governed by an egress policy (egress.py); forward.py serves it."""
