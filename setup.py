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
        "eval": ["lm-eval==0.4.13", "matplotlib", "pyarrow"],  # tasks.py copies 0.4.13's prompts
        # triton: the fused memory kernels' tests run under TRITON_INTERPRET=1 on CPU (a GPU install brings its own)
        # (triton 3.9.0 has no Python 3.10 wheel: a 3.10 dev install goes without it, and the kernel tests with it)
        "dev": ["pytest>=8", "lm-eval==0.4.13", "matplotlib", "pyarrow", "triton==3.9.0; python_version >= '3.11'"],
    },
    entry_points={"console_scripts": ["hope-train=hope_megatron.train:main"]},
)
