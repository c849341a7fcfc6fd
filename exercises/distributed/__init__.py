"""Exercises of the distributed chapters (7-9): your twins of `reference.distributed` modules."""
