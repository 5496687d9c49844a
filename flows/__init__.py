"""Bytewax dataflow definitions: sources, the shared pipeline, and runnable flows."""
