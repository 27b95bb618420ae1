"""Veeksha uploader: rebuilds a W&B run from an output directory."""
