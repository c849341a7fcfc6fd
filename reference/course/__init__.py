"""The course's own machinery: the chapter catalog, the autograder and the `llm-course` command."""
