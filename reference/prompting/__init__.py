"""Chapter 3: prompt learning (survey section 1.2(b), and section 4's zero-shot, few-shot and
chain-of-thought prompting).

- `modules`: soft prompts, P-tuning's prompt encoder and prefix tuning, attached to any course
  decoder without changing its code (Chapter 11 builds parameter-efficient fine-tuning on them).
"""
