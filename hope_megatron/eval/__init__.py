"""Evaluation suite on converted checkpoints (docs/evaluation.md): perplexity, zeroshot (lm-eval adapter `hope`),
niah, continual. Each module is runnable as `python -m hope_megatron.eval.X`; every result is a JSON file that
tools/make_report.py turns into reports/*.md."""
