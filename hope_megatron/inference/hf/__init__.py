"""Hugging Face transformers remote code for converted HOPE checkpoints (checkpoints_convert/export_hf.py copies these
files next to the weights). They travel with the checkpoint, so they import neither megatron nor hope_megatron:
modeling_hope.py (the layers) and memory_hope.py (their own plain-torch copy of the memory op, hope_math.md §2–3) are
held to hope_megatron.inference by tests/unit/eval/test_hf_export.py. Nothing here is imported by hope_megatron itself."""
