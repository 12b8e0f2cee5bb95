"""Shared by every stage: configs, data records, model loading, run directories, tracking.

Imports no stage. Heavy libraries (torch, transformers) are imported inside functions
so that `import align.core` stays cheap.
"""
