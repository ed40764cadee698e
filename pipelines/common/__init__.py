"""Shared parts of the pipelines: image loading, detection, encoders and fusion heads, bundle I/O, intended use, OOD."""
