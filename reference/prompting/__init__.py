"""Chapter 3: prompt learning (survey section 1.2(b), and section 4's zero-shot, few-shot and
chain-of-thought prompting).

- `modules`: soft prompts, P-tuning's prompt encoder and prefix tuning, attached to any course
  decoder without changing its code (Chapter 11 builds parameter-efficient fine-tuning on them).
- `core`: templates, verbalizers, calibration, in-context examples, answer extraction, AutoPrompt.
- `strategies`: every learning strategy on the tone task, and the command that compares them.
- `reasoning`: chain of thought against direct answering on word problems of graded difficulty.
"""
