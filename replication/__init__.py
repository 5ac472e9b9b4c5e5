"""Replication suite for "Memorization-Compression Cycles Improve Generalization" (arXiv 2505.08727).

The layers, and what may import what, are described in ARCHITECTURE.md at the repository's root.
"""
