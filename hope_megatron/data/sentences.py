"""Sentence splitting for `tools/preprocess_data.py --split-sentences` (Punkt, offline only).

The Punkt parameters come from `punkt_tab` in a project-local NLTK data root, searched in order:
an explicit folder, `$HOPE_NLTK_DATA`, `data/nltk_data` (tools/fetch_eval_data.py), `third_party/punkt_tab`
(the committed English files). Nothing is ever downloaded. When no parameters exist for the language, an
untrained Punkt splitter is used with a warning (it splits after every period, e.g. "Dr. Smith").
"""

from __future__ import annotations

import os
import warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_NLTK_ROOTS = (os.path.join(REPO_ROOT, "data", "nltk_data"), os.path.join(REPO_ROOT, "third_party", "punkt_tab"))
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def punkt_roots(nltk_data: str | None = None) -> list[str]:
    roots = [nltk_data] if nltk_data else []
    if os.environ.get("HOPE_NLTK_DATA"):
        roots.append(os.environ["HOPE_NLTK_DATA"])
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
        # The default context regex consumes the whitespace after a sentence end, so "\n" between
        # sentences is lost; here the whitespace stays with the sentence (Megatron-LM's --keep-newlines).
        _period_context_fmt = r"""
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
        return self._tok.tokenize(text)
