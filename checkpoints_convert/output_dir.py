"""The converter's --output: a new or empty directory, or an earlier conversion that --overwrite replaces.

Converting into a directory that already holds a conversion would leave its eval/ results (scores of other weights)
and possibly another tokenizer beside the new weights. So a non-empty --output is refused with a list of what is there;
with --overwrite the earlier conversion's own files (model.safetensors, config.json, megatron_args.json, the tokenizer
files they name, eval/, what export_hf.py added, and temporary files of a killed conversion) are removed after the new weights are loaded, and
anything else in the directory is kept and named.
"""

from __future__ import annotations

import glob
import json
import os
from typing import List

from hope_megatron.data.output_paths import OutputPathError

OWN = ("model.safetensors", "config.json", "megatron_args.json", "eval")
# what export_hf.py (convert_to_torch.py --hf) adds: an earlier export's tokenizer must not outlive a re-conversion
HF_EXPORT = ("modeling_hope.py", "memory_hope.py", "configuration_hope.py", "tokenization_hope.py",
             "tokenizer_config.json", "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt")


def _tokenizer_files(output: str) -> List[str]:
    names = []
    for fname, keys in (("config.json", ("tokenizer_file",)),
                        ("megatron_args.json", ("tokenizer_model", "vocab_file", "merge_file"))):
        try:
            with open(os.path.join(output, fname), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        names += [os.path.basename(str(data[k])) for k in keys if isinstance(data, dict) and data.get(k)]
    return names


def previous_conversion(output: str, overwrite: bool) -> List[str]:
    """Paths to remove before writing (empty for a new/empty directory); refuses a non-empty one without overwrite."""
    if not os.path.isdir(output):
        return []
    entries = sorted(os.listdir(output))
    if not entries:
        return []
    if not overwrite:
        shown = ", ".join(e + ("/" if os.path.isdir(os.path.join(output, e)) else "") for e in entries[:6])
        more = f" and {len(entries) - 6} more" if len(entries) > 6 else ""
        raise OutputPathError(
            f"--output {output} is not empty ({shown}{more}); pass a new or empty directory, or add --overwrite to "
            f"replace the earlier conversion (its weights, config, tokenizer and eval/ results are removed).")
    own = set(OWN) | set(HF_EXPORT) | set(_tokenizer_files(output))
    own |= {os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(output), "*.tmp-*"))}
    return [os.path.join(output, e) for e in entries if e in own]
