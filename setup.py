"""hope_megatron: HOPE (Nested Learning: self-modifying Titans + Continuum Memory System) on megatron-core.

`pip install -e .` works on a CPU machine: Transformer Engine and apex are never needed to import the package,
preprocess data, convert checkpoints or run the CPU tests. Install torch first (see the Makefile / README) so that
pip never swaps your torch build for another one.
"""

from setuptools import find_packages, setup

setup(
    name="hope_megatron",
    version="0.1.0",
    description="Google's HOPE architecture (Nested Learning, NeurIPS 2025) trained with megatron-core: TP/PP/DP, "
                "indexed datasets, resharding checkpoints, plain-PyTorch export and evaluation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # megatron-core 0.16.1 asks Python >= 3.10 and ships cp310-cp313 wheels; CI pins 3.11 (Makefile), GPU images run
    # 3.12 (NGC, the lent GPU machine). 3.14 is left out until megatron-core ships wheels for it.
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["hope_megatron", "hope_megatron.*"]),
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "numpy",
        "sentencepiece",
        "nltk",
        "regex",  # GPT2BPETokenizer (nltk pulls it in too; we use it directly)
        "tensorboard",
        "psutil",  # dist_checkpointing's torch_dist save needs it; megatron-core does not declare it
        "pyyaml",
        "safetensors",
    ],
    extras_require={
        # GPU clusters only: the window megatron-core 0.16.1 supports. NVIDIA apex is optional and never required
        # (and the PyPI package called `apex` is an unrelated web toolkit: never install it).
        "gpu": ["transformer-engine[pytorch]>=2.9.0a0,<2.12.0"],
        # tasks.py copies lm-eval 0.4.13's prompts; [hf] brings lm-eval's `--model hf` (accelerate, peft); transformers
        # loads exported checkpoints (checkpoints_convert/export_hf.py: remote code written against 5.24's `cache` API)
        "eval": ["lm-eval[hf]==0.4.13", "transformers>=5.24,<6", "matplotlib", "pyarrow"],
        "wandb": ["wandb>=0.31,<1"],  # --wandb-project (offline when there is no API key or no network)
        # triton: the fused memory kernels' tests run under TRITON_INTERPRET=1 on CPU (a GPU install brings its own)
        # (triton 3.9.0 has no Python 3.10 wheel: a 3.10 dev install goes without it, and the kernel tests with it)
        "dev": ["pytest>=8", "lm-eval[hf]==0.4.13", "transformers==5.24.0", "wandb==0.31.0", "matplotlib", "pyarrow",
                "triton==3.9.0; python_version >= '3.11'"],
    },
    entry_points={"console_scripts": ["hope-train=hope_megatron.train:main"]},
)
