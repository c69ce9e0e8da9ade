"""megatron-core modules of HOPE: the Titans mixer, the CMS levels, the HOPE layer and its specs (design.md §3)."""
