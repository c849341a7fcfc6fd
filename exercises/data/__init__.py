"""Exercises of Chapter 4's data pipeline: your twins of the `reference.data` modules that hold exercises."""
