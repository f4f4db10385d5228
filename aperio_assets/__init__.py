"""aperio: shared, lock-free metadata for a file lake."""
