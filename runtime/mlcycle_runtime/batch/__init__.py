"""Batch scoring: a BatchPrediction's run, `python -m mlcycle_runtime.batch --config ...`."""
