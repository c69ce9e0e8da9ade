"""Training: arguments, the loop over megatron-core schedules, the level-gated CMS optimizer, checkpoints, logs, FLOPs.

Entry point: `python -m hope_megatron.train` (hope_megatron/train.py) -> `loop.pretrain(args)`."""
