"""Exercises for Chapter 11: fine-tuning (LoRA, SFT, QLoRA)."""
