"""Reward and metrics: ``score`` (execution, grammar, IoU) and the study's evaluation metrics."""
