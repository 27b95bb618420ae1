"""Evaluation: metrics, SLOs, health checks, time series, distributions and plots."""
