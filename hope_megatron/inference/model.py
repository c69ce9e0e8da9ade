"""HopeLM: the plain PyTorch HOPE language model loaded from a converted directory (no megatron import).

    model = load_model("OUT")                         # OUT/config.json + OUT/model.safetensors (convert_to_torch.py)
    logits = model(tokens)                            # [B, L] -> [B, L, V], one whole-sequence forward
    logits, state = model(tokens, state=state, return_state=True)   # streaming: state carries every layer's memory
    nll = model.token_nll(tokens, segment=4096)       # -log p(x_{t+1} | x_{<=t}) over a stream of any length
    out = model.generate(prompt, max_new_tokens=16)   # greedy

Streaming state (hope_math.md §7.2): per memory layer the op's TitansState (every memory's weights and momentum, open
chunk's pending k, v, η, α) and the conv tail; per attention layer the KV cache (window-bounded for W layers); the
stream's token index. Test-time CMS updates (hope_math §4.4) change the CMS parameters in place; see cms_stream.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hope_megatron.inference.layers import HopeLayer, make_norm
from hope_megatron.ops import TitansOpConfig

# config.json format_version that convert_to_torch.py writes; 1 held dead x̃ rows (drop_dead_x_rows, issue 16)
CONVERTED_FORMAT = 2
from hope_megatron.ops.documents import document_starts

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
VOCAB_TABLES = ("embedding.word_embeddings.weight", "output_layer.weight")


@dataclass
class StreamState:
    """Everything a stream carries between calls: one entry per layer, the number of tokens consumed and, under
    hope_reset_at_eod, whether each row's last token was EOD (then the next call starts a document)."""
    layers: List[object]
    position: int = 0
    last_eod: Optional[torch.Tensor] = None


class _Embedding(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)


class _Decoder(nn.Module):
    def __init__(self, cfg: dict, op_configs):
        super().__init__()
        self.layers = nn.ModuleList([HopeLayer(cfg, c, op_configs) for c in cfg["layer_letters"]])
        self.final_layernorm = make_norm(cfg)


class HopeLM(nn.Module):
    """Embedding -> HOPE layers -> final norm -> output layer (hope_math §5.1), parameter names of megatron's GPTModel."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        op_configs = {k: TitansOpConfig(**v) for k, v in cfg.get("op_configs", {}).items()}
        self.embedding = _Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.decoder = _Decoder(cfg, op_configs)
        self.tied = bool(cfg.get("share_embeddings_and_output_weights", False))
        # hope_math §2.7: under hope_reset_at_eod the memory restarts after every EOD token, as in training
        self.reset_eod = bool(cfg.get("hope_reset_at_eod", False))
        self.eod = cfg.get("eod_token_id")
        if self.reset_eod and self.eod is None:
            raise ValueError("config.json sets hope_reset_at_eod but no eod_token_id; add the tokenizer's EOD id "
                             "(convert_to_torch.py writes it).")
        if not self.tied:
            self.output_layer = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    @property
    def vocab_size(self) -> int:
        return self.cfg["vocab_size"]

    @property
    def has_attention(self) -> bool:
        return any(c in "AW" for c in self.cfg["layer_letters"])

    def forward(self, tokens: torch.Tensor, state: Optional[StreamState] = None, return_state: bool = False,
                last_only: bool = False):
        """tokens [B, L] -> logits [B, L, V] (fp32 math as stored); with return_state also the new StreamState.
        last_only: logits of the last position only ([B, 1, V]; streaming a prompt needs no more)."""
        x = self.embedding.word_embeddings(tokens)
        layer_states = state.layers if state is not None else [None] * len(self.decoder.layers)
        starts, last_eod = None, None
        if self.reset_eod:
            starts = document_starts(tokens, self.eod, first=state.last_eod if state is not None else None)
            last_eod = tokens[:, -1] == self.eod if tokens.shape[1] else (state.last_eod if state else None)
        new_states = []
        for layer, st in zip(self.decoder.layers, layer_states):
            x, st = layer(x, st, starts)
            new_states.append(st)
        if last_only:
            x = x[:, -1:]
        x = self.decoder.final_layernorm(x)
        w = self.embedding.word_embeddings.weight if self.tied else self.output_layer.weight
        logits = F.linear(x, w)
        if not return_state:
            return logits
        return logits, StreamState(new_states, (state.position if state is not None else 0) + tokens.shape[1],
                                   last_eod)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross entropy of tokens [B, L+1] (inputs tokens[:, :-1], labels tokens[:, 1:])."""
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    @torch.no_grad()
    def token_nll(self, tokens: torch.Tensor, segment: int = 2048, state: Optional[StreamState] = None):
        """-log p(x_{t+1} | x_{<=t}) for t = 0..L-2 of tokens [B, L], streamed `segment` tokens at a time with the
        carried state (memory stays flat in L for memory variants; attention grows its KV cache)."""
        out = []
        for s in range(0, tokens.shape[1] - 1, segment):
            piece = tokens[:, s:s + segment]
            logits, state = self(piece, state, return_state=True)
            tgt = tokens[:, s + 1:s + 1 + piece.shape[1]]
            lp = torch.log_softmax(logits[:, :tgt.shape[1]].float(), dim=-1)
            out.append(-lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1))
            del logits, lp  # the next segment's call must not overlap this one's [B, S, V] logits
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, segment: int = 2048, eos_id: Optional[int] = None,
                 state: Optional[StreamState] = None, on_segment=None) -> torch.Tensor:
        """Greedy continuation of prompt [B, L]: the prompt is streamed in segments, then one token per step with the
        carried state. Returns the new tokens [B, n] (n <= max_new_tokens; stops early when every row hit eos_id).
        on_segment(n) is called after each prompt segment of n tokens (progress of long prompts)."""
        logits = None
        for s in range(0, prompt.shape[1], segment):
            logits = None
            logits, state = self(prompt[:, s:s + segment], state, return_state=True, last_only=True)
            if on_segment is not None:
                on_segment(min(segment, prompt.shape[1] - s))
        out = []
        nxt = logits[:, -1].argmax(-1)
        for i in range(max_new_tokens):
            out.append(nxt)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
            if i + 1 < max_new_tokens:
                logits, state = self(nxt[:, None], state, return_state=True)
                nxt = logits[:, -1].argmax(-1)
        return torch.stack(out, dim=1)


def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} does not exist; convert a checkpoint first with "
                                f"checkpoints_convert/convert_to_torch.py --load SAVE --output {path}.")
    with open(cfg_path, encoding="utf-8") as f:
        return json.load(f)


def load_model(path: str, dtype: torch.dtype = torch.float32, device="cpu") -> HopeLM:
    """The converted model in `path` (config.json + model.safetensors), in eval mode. Its vocabulary is config.json's
    `vocab_size` (the tokenizer's): tables saved with more rows (megatron's TP padding) are cut to it, so no padding
    row ever takes probability mass in a logit."""
    cfg = read_config(path)
    model = HopeLM(cfg)
    sd, _ = converted_state_dict(path, cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}/{WEIGHTS_NAME} does not match its config.json (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}); re-run convert_to_torch.py.")
    return model.to(device=device, dtype=dtype).eval()


def converted_state_dict(path: str, cfg: dict) -> Tuple[dict, bool]:
    """(the weights of `path` in today's layout, whether that differs from the file): a format-1 directory's dead x̃
    rows dropped, and the vocabulary tables cut to config.json's `vocab_size` (rows past it are megatron's TP
    padding, which never reach a logit). load_model and export_hf.py (the transformers files) read weights here."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(path, WEIGHTS_NAME))
    changed = int(cfg.get("format_version", 1)) < CONVERTED_FORMAT
    if changed:
        sd = drop_dead_x_rows(sd, cfg)
    for key in VOCAB_TABLES:
        if key in sd and sd[key].shape[0] > cfg["vocab_size"]:
            sd[key] = sd[key][:cfg["vocab_size"]]
            changed = True
    return sd, changed


def drop_dead_x_rows(sd: dict, cfg: dict) -> dict:
    """A format-1 directory (converted before issue 16) holds x̃ rows in in_proj and the conv of memory layers without
    self-modification, which nothing reads (hope_math §10 #18); they lead each fused tensor, so dropping the first
    H·d_h rows gives today's layout and the same function."""
    rows = cfg["memory_heads"] * cfg["memory_head_dim"]
    out = dict(sd)
    for i, letter in enumerate(cfg["layer_letters"]):
        op = cfg.get("op_configs", {}).get(letter)
        if op is None or op.get("self_mod", True):
            continue
        for name in ("in_proj.weight", "conv_weight"):
            key = f"decoder.layers.{i}.self_attention.{name}"
            if key in out:
                out[key] = out[key][rows:]
    return out


def tokenizer_path(path: str) -> Optional[str]:
    """The tokenizer file copied next to the weights, if the converter found one."""
    name = read_config(path).get("tokenizer_file")
    return os.path.join(path, name) if name else None
