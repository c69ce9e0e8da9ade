"""hope_megatron: Google's HOPE architecture (self-modifying Titans + Continuum Memory System) on megatron-core.

Importing the package is cheap and never imports Transformer Engine, apex or megatron itself; each
subpackage imports what it needs. See README.md and docs/ for the workflow.
"""

__version__ = "0.1.0"
