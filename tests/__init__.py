"""mlcycle test suite."""
