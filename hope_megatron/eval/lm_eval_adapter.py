"""lm-eval model adapter `hope`: EleutherAI lm-evaluation-harness scores a converted HOPE checkpoint.

    lm_eval --model hope --model_args checkpoint=OUT,batch_size=8 --tasks ...   (after importing this module)
    HopeEvalLM(checkpoint="OUT")  or  HopeEvalLM(model=HopeLM, tokenizer=tok)   (in Python)

log-likelihoods (TemplateLM: trailing context spaces move to the continuation; the whole string is tokenised and
split, as lm-eval's HF model does), rolling log-likelihoods (lm-eval's disjoint windows of max_length tokens) and
greedy generation with stop strings. Inputs are right-padded into batches, which is exact because every HOPE variant
is strictly causal; each sequence starts from a fresh memory state (no state crosses requests).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

try:  # lm-eval is the `eval` extra; the module must import without it (tests/unit/test_platform.py)
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - exercised only without lm-eval
    TemplateLM = object

    def register_model(name):
        return lambda cls: cls


@register_model("hope")
class HopeEvalLM(TemplateLM):
    def __init__(self, checkpoint: Optional[str] = None, model=None, tokenizer=None, batch_size: int = 8,
                 max_length: Optional[int] = None, max_gen_toks: int = 64, segment: int = 2048, **kwargs):
        if TemplateLM is object:
            raise ImportError("the `hope` lm-eval adapter needs lm-eval; install it with `pip install -e '.[eval]'` "
                              "(lm-eval==0.4.13).")
        super().__init__()
        if model is None:
            if checkpoint is None:
                raise ValueError("the `hope` lm-eval model needs checkpoint=DIR (a convert_to_torch.py output) or a "
                                 "model and tokenizer.")
            from hope_megatron.eval.common import load

            model, tokenizer, _ = load(checkpoint)
        self.model, self.tok = model.eval(), tokenizer
        self._batch = int(batch_size)
        self._max_length = int(max_length or model.cfg.get("seq_length", 2048))
        self.max_gen_toks, self.segment = int(max_gen_toks), int(segment)

    # -------------------------------------------------------------------------------------------- tokenisation
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eod)

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> List[int]:
        return list(self.tok.tokenize(string))

    def tok_decode(self, ids) -> str:
        return self.tok.detokenize(ids)

    # ---------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def _score(self, items: List[Tuple[List[int], List[int]]], progress=None) -> List[Tuple[float, bool]]:
        """(sum log p(cont | ctx), cont is the greedy continuation) per (context ids, continuation ids); progress
        (eval/progress.Progress) advances by the requests of every batch."""
        out: List[Optional[Tuple[float, bool]]] = [None] * len(items)
        prepared = []
        for i, (ctx, cont) in enumerate(items):
            whole = (ctx + cont)[-(self.max_length + 1):]
            inp = whole[:-1]
            prepared.append((i, inp, cont))
        prepared.sort(key=lambda r: -len(r[1]))  # similar lengths share a batch
        for b in range(0, len(prepared), self._batch):
            chunk = prepared[b:b + self._batch]
            width = max(len(r[1]) for r in chunk)
            batch = torch.full((len(chunk), width), self.eot_token_id, dtype=torch.long)
            for k, (_, inp, _) in enumerate(chunk):
                batch[k, :len(inp)] = torch.tensor(inp, dtype=torch.long)  # right padding: causal, so exact
            logp = torch.log_softmax(self.model(batch).float(), dim=-1)
            for k, (i, inp, cont) in enumerate(chunk):
                n = min(len(cont), len(inp))  # a continuation longer than the window: its last n tokens (as HF)
                lp = logp[k, len(inp) - n:len(inp)]
                tgt = torch.tensor(cont[len(cont) - n:], dtype=torch.long)
                out[i] = (float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
            if progress is not None:
                progress.advance(len(chunk))
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        from hope_megatron.eval.progress import Progress

        progress = None if disable_tqdm else Progress(len(requests), "requests", "zeroshot loglikelihood")
        return self._score([(ctx, cont) for _, ctx, cont in requests], progress)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            (string,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            out.append(sum(ll for ll, _ in self._score(windows)))
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            n = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)[-self.max_length:] or [self.eot_token_id]
            new = self.model.generate(torch.tensor([ids]), n, segment=self.segment, eos_id=self.eot_token_id)[0]
            text = self.tok_decode(new.tolist())
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
        return out
