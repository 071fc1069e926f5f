"""Per-route request filters (one chain per route rule): CORS, IP rules, and what later
features add. `chain.py` is the contract; each filter lives in its own module."""
