"""Exercises of Chapter 3: your twins of `reference.prompting` modules."""
