"""The trainer: `python -m mlcycle_runtime.train --config FILE` runs one TrainingJob and reports its result."""
