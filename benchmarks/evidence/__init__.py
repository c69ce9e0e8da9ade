"""The evidence grid (issue 18): associative recall, passkey retrieval past the training length and the permuted-class
continual stress test, HOPE against parameter-matched baselines, through the shipped train -> convert -> eval path.
Entry point: `python benchmarks/evidence/run.py` (README of this folder: reports/evidence.md)."""
