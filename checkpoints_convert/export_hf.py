"""Make a converted HOPE checkpoint loadable by Hugging Face transformers (and so by `lm_eval --model hf`).

    python checkpoints_convert/export_hf.py --checkpoint OUT [--output HF_DIR]
    python checkpoints_convert/convert_to_torch.py --load SAVE --output OUT --hf      (the same, right after converting)

Reads a convert_to_torch.py directory (config.json + model.safetensors + the tokenizer file) and writes, into
--output (default: the checkpoint directory itself, in place):
  config.json          the converted config plus model_type "hope", auto_map, the in_proj layout of every memory
                       letter (read from hope_megatron.inference, so the remote code never hard-codes it), token ids,
                       hope_reset_at_eod and eod_token_id (the remote code restarts the memory after each EOD)
  modeling_hope.py, memory_hope.py, configuration_hope.py   remote code (hope_megatron/inference/hf/): no megatron, no hope_megatron
  tokenizer            SentencePiece -> tokenizer.model + tokenization_hope.py; NullTokenizer -> tokenization_hope.py;
                       GPT-2 BPE -> vocab.json + merges.txt for transformers' GPT2Tokenizer; tokenizer_config.json
  generation_config.json  EOD as eos/pad, so generate stops at the end of a document
The directory keeps loading with hope_megatron.inference.load_model (extra config keys are ignored); with --output
elsewhere the weights, arguments and tokenizer file are linked (or copied) there too. Then:

    AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True); AutoTokenizer.from_pretrained(HF_DIR, ...)
    lm_eval --model hf --model_args pretrained=HF_DIR,trust_remote_code=True --tasks lambada_openai,wikitext,piqa
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Optional

AUTO_MAP = {"AutoConfig": "configuration_hope.HopeConfig", "AutoModelForCausalLM": "modeling_hope.HopeForCausalLM"}
TOKENIZER_AUTO = {"AutoTokenizer": ["tokenization_hope.HopeTokenizer", None]}
FORMAT_VERSION = 1


def remote_dir() -> str:
    """hope_megatron/inference/hf, wherever hope_megatron is installed (the remote code files are copied from it)."""
    import hope_megatron.inference.hf as hf

    return os.path.dirname(os.path.abspath(hf.__file__))


def fail(msg: str):
    raise SystemExit(f"export_hf: {msg}")


def _read_source(src: str) -> dict:
    cfg_path = os.path.join(src, "config.json")
    if not os.path.isfile(cfg_path) or not os.path.isfile(os.path.join(src, "model.safetensors")):
        fail(f"{src} is not a converted checkpoint (it needs config.json and model.safetensors); run "
             f"checkpoints_convert/convert_to_torch.py --load SAVE --output {src} first.")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        fail(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno}); re-run convert_to_torch.py.")
    missing = [k for k in ("layer_letters", "hidden_size", "vocab_size", "op_configs") if k not in cfg]
    if missing:
        fail(f"{cfg_path} lacks {', '.join(missing)}: it was not written by convert_to_torch.py; re-run it.")
    if cfg.get("hope_reset_at_eod") and cfg.get("eod_token_id") is None:
        fail(f"{cfg_path} sets hope_reset_at_eod but no eod_token_id, so the exported model could not find the "
             f"document starts; re-run convert_to_torch.py, which records it.")
    return cfg


def in_proj_layout(cfg: dict) -> dict:
    """{letter: [[name, width per head, convolved], ...]} of every memory letter, from hope_megatron.inference."""
    from hope_megatron.inference.layers import in_proj_components
    from hope_megatron.ops import TitansOpConfig

    return {letter: [list(c) for c in in_proj_components(TitansOpConfig(**op), cfg["memory_head_dim"])]
            for letter, op in cfg["op_configs"].items()}


def _place(src_file: str, dst_file: str) -> None:
    """dst_file = src_file's content: a hard link where the filesystem allows, else a copy."""
    if os.path.abspath(src_file) == os.path.abspath(dst_file):
        return
    if os.path.exists(dst_file):
        os.remove(dst_file)
    try:
        os.link(src_file, dst_file)
    except OSError:
        shutil.copy2(src_file, dst_file)


def _write_json(path: str, obj: dict) -> None:
    """Write under a temporary name, then rename: an interrupted export never leaves a half-written config."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def export_tokenizer(src: str, out: str, cfg: dict) -> Optional[int]:
    """Tokenizer files for AutoTokenizer; returns the EOD id, or None (with a warning) when the file is not there."""
    from hope_megatron.eval.common import load_tokenizer

    kind = cfg.get("tokenizer_type") or "NullTokenizer"
    try:
        tok = load_tokenizer(src)
    except (ValueError, OSError) as e:
        print(f"warning: export_hf: the {kind} of {src} could not be read ({e}); the model is exported without a "
              f"tokenizer (copy the tokenizer file next to model.safetensors and re-run to add it).", file=sys.stderr)
        return None
    common = {"model_max_length": int(cfg.get("seq_length") or 2048), "clean_up_tokenization_spaces": False}
    if kind == "GPT2BPETokenizer":
        args = json.load(open(os.path.join(src, "megatron_args.json"), encoding="utf-8"))
        _place(os.path.join(src, os.path.basename(args["vocab_file"])), os.path.join(out, "vocab.json"))
        _place(os.path.join(src, os.path.basename(args["merge_file"])), os.path.join(out, "merges.txt"))
        conf = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
                "add_bos_token": False, "split_special_tokens": True, **common}
    else:
        conf = {"tokenizer_class": "HopeTokenizer", "auto_map": TOKENIZER_AUTO, "eod_id": int(tok.eod), **common}
        if kind == "SentencePieceTokenizer":
            _place(tok.model_path, os.path.join(out, "tokenizer.model"))
            conf["kind"] = "sentencepiece"
        else:
            conf.update(kind="null", null_vocab_size=int(tok.vocab_size))
        shutil.copy2(os.path.join(remote_dir(), "tokenization_hope.py"), os.path.join(out, "tokenization_hope.py"))
    _write_json(os.path.join(out, "tokenizer_config.json"), conf)
    return int(tok.eod)


def export_hf(checkpoint: str, output: Optional[str] = None) -> dict:
    """Write the transformers files for `checkpoint` into `output` (default: in place). Returns the config written."""
    from hope_megatron.inference.model import CONVERTED_FORMAT, converted_state_dict

    cfg = _read_source(checkpoint)
    out = output or checkpoint
    os.makedirs(out, exist_ok=True)
    if os.path.abspath(out) != os.path.abspath(checkpoint):
        for name in ("model.safetensors", "megatron_args.json", cfg.get("tokenizer_file") or ""):
            if name and os.path.isfile(os.path.join(checkpoint, name)):
                _place(os.path.join(checkpoint, name), os.path.join(out, name))
    eod = export_tokenizer(checkpoint, out, cfg)
    sd, changed = converted_state_dict(checkpoint, cfg)
    if changed:  # an older conversion (dead x̃ rows) or padded vocabulary rows: the remote code reads today's layout
        from safetensors.torch import save_file

        tmp = os.path.join(out, "model.safetensors.tmp")
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
        os.replace(tmp, os.path.join(out, "model.safetensors"))  # replaces a hard link to the source, never its data
        cfg["format_version"] = CONVERTED_FORMAT
    for name in ("modeling_hope.py", "memory_hope.py", "configuration_hope.py"):
        shutil.copy2(os.path.join(remote_dir(), name), os.path.join(out, name))
    cfg.update(model_type="hope", architectures=["HopeForCausalLM"], auto_map=AUTO_MAP,
               in_proj_components=in_proj_layout(cfg), dtype="float32", tie_word_embeddings=False, use_cache=True,
               eos_token_id=eod, pad_token_id=eod, bos_token_id=None, hf_export_version=FORMAT_VERSION)
    cfg.setdefault("max_position_embeddings", cfg.get("seq_length"))
    # the remote code resets every memory layer after each EOD token when the model was trained so (hope_math §2.7)
    cfg.update(hope_reset_at_eod=bool(cfg.get("hope_reset_at_eod", False)), eod_token_id=cfg.get("eod_token_id"))
    _write_json(os.path.join(out, "generation_config.json"),
                {"eos_token_id": eod, "pad_token_id": eod, "bos_token_id": None, "do_sample": False})
    _write_json(os.path.join(out, "config.json"), cfg)
    return cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a convert_to_torch.py output directory")
    p.add_argument("--output", default=None, help="where to write (default: the checkpoint directory, in place)")
    a = p.parse_args(argv)
    cfg = export_hf(a.checkpoint, a.output)
    out = a.output or a.checkpoint
    print(f"exported {a.checkpoint} ({cfg.get('hope_variant')}, layers {cfg['layer_letters']}) for transformers -> "
          f"{out}\n  AutoModelForCausalLM.from_pretrained({out!r}, trust_remote_code=True)\n  lm_eval --model hf "
          f"--model_args pretrained={out},trust_remote_code=True --tasks ...")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
