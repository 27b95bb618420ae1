"""Alias package so the seed's `python -m veeksha.benchmark` invocation keeps working."""
