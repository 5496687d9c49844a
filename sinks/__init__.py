"""Outputs of the engine: ClickHouse (schema, backends, Bytewax sink) and the sends topic."""
