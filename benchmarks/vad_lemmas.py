r"""How far the lemmas of data.vad_lookup=lemma_only (simplemma, context-free) are from the public
code's (WordNet's, with the part of speech NLTK's tagger gives the word in its sentence), and how
much data.vad_lookup=wordnet_pos's one-lemma-per-token table loses against the per-context rule.

Text: the utterances of tests/fixtures/artemis_small*.csv in ArtEmis's preprocessing (the
preprocessed CSV's utterance_spelled; the raw CSV's utterances through artemis_text.py). Needs
NLTK and its data (python -m nltk.downloader wordnet averaged_perceptron_tagger_eng, or
NLTK_DATA pointing at a folder holding them).

  python benchmarks/vad_lemmas.py
"""

import collections
import csv
import pathlib

from sevlm_jax.data import artemis_text
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.data import vad_wordnet
from sevlm_jax import vocab

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def utterances() -> list[str]:
  with open(FIXTURES / "artemis_small_preprocessed.csv", newline="", encoding="utf-8") as f:
    texts = [row["utterance_spelled"] for row in csv.DictReader(f)]
  spell = artemis_text.preprocessor()
  with open(FIXTURES / "artemis_small.csv", newline="", encoding="utf-8") as f:
    texts += [spell(row["utterance"])[0] for row in csv.DictReader(f) if row["utterance"].strip()]
  return [t for t in texts if t.strip()]


def share(count: int, total: int) -> str:
  return f"{count:,} of {total:,} ({100 * count / total:.1f}%)"


def main() -> None:
  nltk = vad_wordnet.load_nltk()
  texts = utterances()
  words = [w for t in texts for w in t.split()]
  print(f"{len(texts)} preprocessed utterances, {len(words):,} words")
  for pos, name in (("n", "nouns"), ("v", "verbs"), ("a", "adjectives")):
    differ = sum(vad_lib.lemmatize(w) != nltk.lemmatize(w, pos) for w in words)
    print(f"  simplemma differs from WordNet with every word taken as {name}: {share(differ, len(words))}")

  tokenizer = tokenizer_lib.load_tokenizer()
  strings = vad_wordnet.token_strings(tokenizer)
  per_context = []
  for text in texts:  # the public code's sentences: the training sequence of each utterance
    ids = [int(i) for i in tokenizer.build_sequence("awe", text, 30)["input_ids"]]
    lemmas = vad_wordnet.context_lemmas([strings[i] for i in ids], nltk)
    per_context += [(i, lemma) for i, lemma in zip(ids, lemmas) if i < vocab.BOS_ID]
  differ = [(strings[i], lemma) for i, lemma in per_context
            if vad_lib.lemmatize(strings[i].lower()) != lemma]
  print(f"  token positions of those sequences (control tokens aside): {len(per_context):,}")
  print(f"  lemma_only's lemma differs from the public rule's at {share(len(differ), len(per_context))}")
  common = collections.Counter((w, vad_lib.lemmatize(w.lower()), lemma) for w, lemma in differ)
  print(f"    {len(common)} distinct (token -> simplemma, public lemma), most frequent first: "
        + ", ".join(f"{w} -> {o} ({p}) x{n}" for (w, o, p), n in common.most_common(20)))

  majority = {}
  for i, lemma in per_context:
    majority.setdefault(i, collections.Counter())[lemma] += 1
  lost = sum(majority[i].most_common(1)[0][0] != lemma for i, lemma in per_context)
  print(f"  wordnet_pos's table (each token's most frequent lemma) differs from the per-context "
        f"lemma at {share(lost, len(per_context))}")


if __name__ == "__main__":
  main()
