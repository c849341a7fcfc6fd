"""Exercises for Chapter 15 (efficient inference); see reference/inference for the rest of the package."""
