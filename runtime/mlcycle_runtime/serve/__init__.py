"""The model server: `python -m mlcycle_runtime.serve --config FILE` serves one model version with BentoML."""
