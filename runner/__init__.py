"""Veeksha load runner: config → sessions → dispatch → records → evaluation → files."""
