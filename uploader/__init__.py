"""Veeksha uploader: rebuilds W&B runs from output directories (`veeksha-upload`, spec: wandb.md).

Importing this package does not import wandb; the SDK is imported where a run is uploaded.
"""
