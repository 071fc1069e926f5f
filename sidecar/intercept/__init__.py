"""Transparent interception: the netfilter rules that send a workload's TCP to its sidecar
(rules.py, applied by `meshctl init`) and the original destination the sidecar reads back
from a redirected connection (origdst.py)."""
