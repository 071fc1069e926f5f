"""`meshctl inject` and `uninject`: the sidecar written into the files users already have
(compose.py for docker compose), as `linkerd inject` does for manifests."""
