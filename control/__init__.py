"""The control plane (`meshctl server`): resources, registry, snapshots, and their APIs."""
