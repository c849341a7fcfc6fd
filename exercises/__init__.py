"""Your implementations of the course's exercises.

Each module here mirrors the module of the same name in `reference/`: the same functions and
classes, with the same signatures and docstrings, and bodies that raise `NotImplementedError`
until you write them. Grade your work with `llm-course grade CHAPTER`.

Do not import the module's own solutions from `reference` (the grader refuses such exercises);
code of *other* modules of `reference` (earlier chapters) is yours to use.
"""
