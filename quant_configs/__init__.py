"""Quantization recipes and parity thresholds, shipped as package data (YAML files)."""
