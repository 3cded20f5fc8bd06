"""The operations console: pages and an HTTP API over the registry, rollout, runs and review functions."""
