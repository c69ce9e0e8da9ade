"""Sentence splitting for `tools/preprocess_data.py --split-sentences` (Punkt, offline only).

The Punkt parameters come from `punkt_tab` in an NLTK data root, searched in order: an explicit folder
(--nltk-data), `$HOPE_NLTK_DATA`, every entry of `$NLTK_DATA` (os.pathsep-separated, as NLTK reads it),
`data/nltk_data` (tools/fetch_eval_data.py), `third_party/punkt_tab` (the committed English files). Nothing is ever
downloaded, and the old pickled `punkt` models are not read (NLTK >= 3.9 refuses pickles). When no parameters exist
for the language, an untrained Punkt splitter is used with a warning (it splits after every period, e.g. "Dr. Smith").

Splitting matches Megatron-LM's tools/preprocess_data.py (core_v0.16.1): texts are split in pieces of at most
1,000,000 characters, and --keep-newlines uses Megatron's period-context regex (the one of the StackOverflow answer it
cites: `\S*` word material, the sentence end, `\s*` kept with the sentence).
"""

from __future__ import annotations

import os
import warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_NLTK_ROOTS = (os.path.join(REPO_ROOT, "data", "nltk_data"), os.path.join(REPO_ROOT, "third_party", "punkt_tab"))
MAX_CHARS = 1_000_000  # Megatron-LM's Encoder.split max_len
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def punkt_roots(nltk_data: str | None = None) -> list[str]:
    roots = [nltk_data] if nltk_data else []
    if os.environ.get("HOPE_NLTK_DATA"):
        roots.append(os.environ["HOPE_NLTK_DATA"])
    roots += [r for r in os.environ.get("NLTK_DATA", "").split(os.pathsep) if r]
    return [os.path.abspath(r) for r in roots + list(DEFAULT_NLTK_ROOTS)]


def find_punkt_root(lang: str = "english", nltk_data: str | None = None) -> str | None:
    """The first root holding all four `tokenizers/punkt_tab/<lang>/` files, or None."""
    for root in punkt_roots(nltk_data):
        lang_dir = os.path.join(root, "tokenizers", "punkt_tab", lang)
        if all(os.path.isfile(os.path.join(lang_dir, f)) for f in PUNKT_FILES):
            return root
    return None


def _keep_newlines_vars():
    from nltk.tokenize.punkt import PunktLanguageVars

    class NewlineKeepingVars(PunktLanguageVars):
        # The default context regex consumes the whitespace after a sentence end, so "\n" between sentences is lost;
        # here the whitespace stays with the sentence. Megatron-LM's --keep-newlines regex exactly: the leading \S*
        # (word material before the end) changes where Punkt looks for the previous token, hence which ends it keeps.
        _period_context_fmt = r"""
            \S*
            %(SentEndChars)s
            \s*
            (?=(?P<after_tok>
                %(NonWord)s
                |
                (?P<next_tok>\S+)
            ))"""

    return NewlineKeepingVars()


class SentenceSplitter:
    """Callable text -> list of sentences. `trained` says whether real punkt_tab parameters were found."""

    def __init__(self, lang: str = "english", keep_newlines: bool = False, nltk_data: str | None = None, warn=True):
        import nltk
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        self.lang, self.keep_newlines = lang, keep_newlines
        self.root = find_punkt_root(lang, nltk_data)
        if self.root is None:
            self.trained = False
            if warn:
                warnings.warn(
                    f"punkt_tab for {lang!r} not found in {punkt_roots(nltk_data)}; using the naive untrained splitter "
                    "(splits after abbreviations such as 'Dr.'). Run tools/fetch_eval_data.py --only punkt_tab to fix.",
                    stacklevel=2,
                )
            params = PunktSentenceTokenizer()._params
        else:
            self.trained = True
            if self.root not in nltk.data.path:
                nltk.data.path.insert(0, self.root)  # nltk's path sandbox reads only from data roots
            params = nltk.tokenize.PunktTokenizer(lang)._params
        if keep_newlines:
            self._tok = PunktSentenceTokenizer(params, lang_vars=_keep_newlines_vars())
        else:
            self._tok = PunktSentenceTokenizer(params)

    def __call__(self, text: str) -> list[str]:
        # Megatron-LM splits texts in pieces of MAX_CHARS characters before Punkt (same sentences, byte for byte)
        return [s for i in range(0, len(text), MAX_CHARS) for s in self._tok.tokenize(text[i:i + MAX_CHARS])]
