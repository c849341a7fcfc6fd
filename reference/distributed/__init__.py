"""Parallel training on real processes: launcher, counted point-to-point messages, collectives, cost model."""
