"""Exercises of Chapter 5: your twins of `reference.models` modules."""
