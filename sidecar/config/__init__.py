"""Configuration: resource parsing, validation, compilation into snapshots, and loading."""
