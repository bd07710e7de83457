"""Drift: statistics on histograms and raw samples (`stats`) and the monitor workload (`monitor`)."""
