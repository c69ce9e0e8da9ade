"""HopeTokenizer for Hugging Face transformers: the checkpoint's own tokenizer behind `AutoTokenizer`.

Written by checkpoints_convert/export_hf.py with tokenizer_config.json; it imports neither megatron nor hope_megatron.
kind "sentencepiece": tokenizer.model read by the sentencepiece package, encoded and decoded exactly as training did
(no BOS/EOS added, no special-token splitting of the text, SentencePiece's own decode). kind "null": Megatron's
NullTokenizer (text is space-separated integer ids; EOD = vocab_size − 1). GPT-2 BPE checkpoints use transformers'
own GPT2Tokenizer instead (vocab.json + merges.txt).
"""

from __future__ import annotations

import os
import shutil
from typing import List, Optional

from transformers import PreTrainedTokenizer


class HopeTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: Optional[str] = None, kind: str = "sentencepiece", eod_id: int = 0,
                 null_vocab_size: Optional[int] = None, **kwargs):
        self.kind, self.eod_id, self.vocab_file = kind, int(eod_id), vocab_file
        if kind == "sentencepiece":
            import sentencepiece

            self.sp = sentencepiece.SentencePieceProcessor(model_file=vocab_file)
            self._size = int(self.sp.get_piece_size())
        elif kind == "null":
            self.sp, self._size = None, int(null_vocab_size)
        else:
            raise ValueError(f"tokenizer_config.json kind={kind!r} is not 'sentencepiece' or 'null'; re-export with "
                             f"checkpoints_convert/export_hf.py.")
        eos = self._piece(self.eod_id)
        kwargs.setdefault("eos_token", eos)
        kwargs.setdefault("pad_token", eos)  # batches are padded with EOD and masked; the model never sees the pads
        kwargs.setdefault("split_special_tokens", True)  # the text is encoded as training encoded it
        kwargs.setdefault("special_tokens_pattern", "none")  # training added no BOS/EOS to a document's tokens
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    def _piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i)) if self.sp is not None else str(int(i))

    @property
    def vocab_size(self) -> int:
        return self._size

    def get_vocab(self):
        return {self._piece(i): i for i in range(self._size)}

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        return self.sp.encode(text, out_type=str) if self.sp is not None else text.split()

    def _convert_token_to_id(self, token: str) -> int:
        if self.sp is not None:
            return self.sp.piece_to_id(token)
        i = int(token)
        if not 0 <= i < self._size:
            raise ValueError(f"NullTokenizer id {i} is outside [0, {self._size}).")
        return i

    def _convert_id_to_token(self, index: int) -> str:
        return self._piece(index)

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        if self.sp is not None:
            return self.sp.decode([self.sp.piece_to_id(t) for t in tokens])
        return " ".join(tokens)

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs) -> str:
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.eod_id]
        if self.sp is not None:
            return self.sp.decode(ids)
        return " ".join(str(i) for i in ids)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None):
        if self.sp is None:
            return ()
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        if os.path.abspath(out) != os.path.abspath(self.vocab_file):
            shutil.copyfile(self.vocab_file, out)
        return (out,)
