"""Refuse an environment whose torch is a CUDA build on a machine without an NVIDIA driver (or the reverse
mistake we can detect): a CUDA wheel on a CPU box is gigabytes of dead weight and hides real install problems."""

import shutil
import sys

import torch

has_driver = shutil.which("nvidia-smi") is not None
cuda_build = torch.version.cuda is not None
print(f"[install] torch {torch.__version__} ({'CUDA ' + torch.version.cuda if cuda_build else 'CPU'} build); "
      f"NVIDIA driver {'found' if has_driver else 'not found'}")
if cuda_build and not has_driver and "--allow-cuda-on-cpu" not in sys.argv:
    sys.exit("[install] error: a CUDA build of torch was installed on a machine without an NVIDIA driver; reinstall "
             "the CPU build: make clean-venv && make test TORCH_INDEX=https://download.pytorch.org/whl/cpu")
