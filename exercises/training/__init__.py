"""Exercises of Chapter 6 (pre-training): your twins of `reference.training` modules."""
