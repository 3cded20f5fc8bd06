"""The registry of record over ZenML's Model Control Plane.

Versions, approvals, releases, datasets, the lock and the promotion routine. Steps, the runner, the CLI and the
console call it; it never imports steps or pipelines.
"""
