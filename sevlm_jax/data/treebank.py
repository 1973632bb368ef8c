"""NLTK's word_tokenize as ArtEmis ran it (NLTK 3.4.5), offline: no punkt data needed.

word_tokenize(text) first splits sentences with punkt, then applies the Penn Treebank rules below
(TreebankWordTokenizer plus the four "improved" quote and period rules NLTK 3.4.5 adds for
word_tokenize) to each sentence. Punkt only ends a sentence at '.', '?' or '!', and ArtEmis's
preprocessing has turned those into spaces before it tokenizes, so there the sentence split is a
no-op and the rules below give exactly NLTK's tokens. `tokenize` therefore refuses text holding
one of those three characters rather than guess where punkt would have split it.

The rules are NLTK 3.4.5's, applied in its order (later NLTK versions changed some: the
single-quote rule, '...' and the possessive period), each rewriting the whole string; the tokens
are the whitespace-separated pieces of the result.
"""

import re

SENTENCE_END_CHARS = ".?!"

# (pattern, replacement, characters one of which the text must hold for the rule to apply) in
# NLTK 3.4.5's order. The characters only skip rules that cannot match: ArtEmis's text has lost
# most punctuation, and most of the 30 substitutions would find nothing.
_STARTING_QUOTES = (
    (re.compile("([«“‘„]|[`]+)"), r" \1 ", "«“‘„`"),         # opening unicode quotes, backquotes
    (re.compile(r'^"'), "``", '"'),                           # a leading double quote opens
    (re.compile("(``)"), r" \1 ", "`"),
    (re.compile(r"""([ (\[{<])("|'{2})"""), r"\1 `` ", "\"'"),  # so does one after a space or bracket
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2", "'"),  # 'x (not a clitic) splits
)
_PUNCTUATION = (
    (re.compile(r"""([^.])(\.)([\])}>"'»”’ ]*)\s*$"""), r"\1 \2 \3 ", "."),  # final period
    (re.compile(r"([:,])([^\d])"), r" \1 \2", ",:"),        # , and : except inside numbers
    (re.compile(r"([:,])$"), r" \1 ", ",:"),
    (re.compile(r"\.\.\."), " ... ", "."),
    (re.compile(r"[;@#$%&]"), r" \g<0> ", ";@#$%&"),
    (re.compile(r"""([^.])(\.)([\])}>"']*)\s*$"""), r"\1 \2\3 ", "."),
    (re.compile(r"[?!]"), r" \g<0> ", "?!"),
    (re.compile(r"([^'])' "), r"\1 ' ", "'"),              # a closing single quote
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> ", "[](){}<>"),  # brackets
    (re.compile("--"), " -- ", "-"),
)
_ENDING_QUOTES = (
    (re.compile("([»”’])"), r" \1 ", "»”’"),
    (re.compile('"'), " '' ", '"'),
    (re.compile(r"(\S)('')"), r"\1 \2 ", "'"),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 ", "'"),       # clitics 's 'm 'd
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 ", "'"),
)
# Robert MacIntyre's two-part contractions: "cannot" -> "can not", "gonna" -> "gon na", ...
_CONTRACTIONS = tuple(re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(mor)('n)\b", r"(?i)\b(wan)(na)\s",
    r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b"))
_ANY_CONTRACTION = re.compile(r"(?i)cannot|d'ye|gimme|gonna|gotta|lemme|mor'n|wanna|'tis|'twas")


def _apply(rules, text: str) -> str:
  for pattern, replacement, needs in rules:
    if any(c in text for c in needs):
      text = pattern.sub(replacement, text)
  return text


def tokenize(text: str) -> list[str]:
  """NLTK 3.4.5 word_tokenize(text) for text without '.', '?' or '!' (one punkt sentence)."""
  if any(c in text for c in SENTENCE_END_CHARS):
    raise ValueError(f"treebank.tokenize: {text[:80]!r} holds '.', '?' or '!', where NLTK's punkt "
                     "would split sentences; map them to spaces first, as ArtEmis does")
  text = _apply(_STARTING_QUOTES, text)
  text = _apply(_PUNCTUATION, text)
  text = _apply(_ENDING_QUOTES, f" {text} ")
  if _ANY_CONTRACTION.search(text):
    for pattern in _CONTRACTIONS:
      text = pattern.sub(r" \1 \2 ", text)
  return text.split()
