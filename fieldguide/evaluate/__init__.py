"""Evaluation stage: metrics, quality gate, reports and plots, two-stage (router + children) evaluation."""
