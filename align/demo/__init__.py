"""The shipped demo: tasks with checkable answers, their data files, and a gold judge."""
