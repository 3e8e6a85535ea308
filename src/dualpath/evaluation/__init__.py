"""Evaluation under docs/protocol.md: held-out documents, context excluded from results."""
