"""Unit tests: pure functions, no cluster, no network."""
