"""Metrics and evaluation against ground truth."""
