"""Exercises for Chapter 13, evaluation."""
