"""Serving stage: the two-stage predictor and its releases, staging checks, the gateway, server processes."""
