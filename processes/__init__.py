"""Processes: the writer process, the projections process, how children start, and their messages."""
