"""Exercises of Chapter 16: your twins of `reference.serving` modules (blocks, paged_attention, scheduler)."""
