"""End-to-end tests: the whole loop on the local control plane."""
