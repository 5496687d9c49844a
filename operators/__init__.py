"""Logic steps: the pure decision engine and the Bytewax glue around it."""
