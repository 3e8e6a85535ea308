"""Evaluation under DESIGN.md's protocol: held-out documents, context excluded from results."""
