"""Data sources: the built-in phantoms and the real datasets, one module each."""
