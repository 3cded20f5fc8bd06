"""ZenML pipelines: wiring only. The runner turns run.py options into pipeline runs."""
