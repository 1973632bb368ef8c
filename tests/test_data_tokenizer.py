"""GPT-2 BPE + added tokens, and the target sequences built from them."""

import pickle
import shutil

import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer()


def test_known_gpt2_ids(tok):
  assert tok.encode("Hello world") == [15496, 995]
  assert tok.encode("The quick brown fox") == [464, 2068, 7586, 21831]
  assert tok.encode(" the emotion is") == [262, 9942, 318]
  assert tok.encode(" something else") == [1223, 2073]
  assert tok.because_id == 780
  assert tok.prompt_ids == [50256, 262, 9942, 318]
  assert tok.vocab_size == vocab.VOCAB_SIZE == 50261


def test_matches_transformers_gpt2_tokenizer(tok):
  transformers = pytest.importorskip("transformers")
  bpe_dir = tokenizer_lib.default_bpe_dir()
  ref = transformers.GPT2TokenizerFast(vocab=str(bpe_dir / "encoder.json"), merges=str(bpe_dir / "vocab.bpe"))
  assert len(ref) == vocab.GPT2_VOCAB_SIZE
  texts = ["Hello world", " café naïve 日本  two  spaces\n", "I'm sure it's 1,234.5 dollars!!",
           "the emotion is something else because the DARK sky", "\ttabs\tand\r\nnewlines", "emoji 🎨 art"]
  for text in texts:
    assert tok.encode(text) == ref.encode(text), text
    assert tok.decode(tok.encode(text)) == text


def test_added_tokens_and_decoding(tok):
  ids = list(range(vocab.BOS_ID, vocab.VOCAB_SIZE))
  assert tok.decode(ids, skip_special=False) == "<|endoftext|><pad><prefix><emotion><explanation>"
  assert tok.decode(ids) == ""
  assert [tok.token_text(i) for i in ids[1:]] == list(vocab.ADDED_TOKENS)
  assert tok.decode([15496, vocab.PAD_ID, 995]) == "Hello world"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([vocab.VOCAB_SIZE])


def test_text_never_becomes_control_ids(tok):
  ids = tok.encode("<pad> <|endoftext|> <emotion> <explanation> <prefix>")
  assert max(ids) < vocab.BOS_ID


def test_build_sequence_layout(tok):
  seq = tok.build_sequence("something else", "  The DARK\n\n sky  ", 20)
  assert all(v.shape == (20,) and v.dtype == np.int32 for v in seq.values())
  emotion_ids = [vocab.BOS_ID, 262, 9942, 318, 1223, 2073]
  explanation_ids = [780] + tok.encode(" the dark sky") + [vocab.EOS_ID]
  n = len(emotion_ids) + len(explanation_ids)
  np.testing.assert_array_equal(seq["input_ids"][:n], emotion_ids + explanation_ids)
  assert (seq["input_ids"][n:] == vocab.PAD_ID).all()
  np.testing.assert_array_equal(
      seq["segment_ids"],
      [vocab.EMOTION_SEGMENT_ID] * 6 + [vocab.EXPLANATION_SEGMENT_ID] * len(explanation_ids)
      + [vocab.PAD_ID] * (20 - n))
  np.testing.assert_array_equal(seq["token_mask"], [1] * n + [0] * (20 - n))
  np.testing.assert_array_equal(seq["labels"], [-1] + emotion_ids[1:] + explanation_ids + [-1] * (20 - n))
  assert tok.decode(seq["input_ids"]) == " the emotion is something else because the dark sky"


def test_build_sequence_emotion_index_and_normalisation(tok):
  by_name = tok.build_sequence("awe", "Big\tMountains", 16)
  by_index = tok.build_sequence(1, "big mountains", 16)
  for k in by_name:
    np.testing.assert_array_equal(by_name[k], by_index[k])
  assert tokenizer_lib.normalize_text("  A \n B\t\tC ") == "a b c"


def test_build_sequence_truncation(tok):
  seq = tok.build_sequence("fear", "the shadows in the corner look like a crowd of faces", 9)
  assert seq["token_mask"].all()
  assert vocab.EOS_ID not in seq["input_ids"][1:]  # cut before <eos>
  assert seq["labels"][0] == -1 and (seq["labels"][1:] == seq["input_ids"][1:]).all()
  np.testing.assert_array_equal(seq["segment_ids"][:5], [vocab.EMOTION_SEGMENT_ID] * 5)
  assert (seq["segment_ids"][5:] == vocab.EXPLANATION_SEGMENT_ID).all()
  short = tok.build_sequence("fear", "", 3)
  np.testing.assert_array_equal(short["input_ids"], [vocab.BOS_ID, 262, 9942])


def test_pickles_by_reloading(tok):
  assert pickle.loads(pickle.dumps(tok)) is tok


def test_rejects_altered_bpe_files(tmp_path, monkeypatch):
  src = tokenizer_lib.default_bpe_dir()
  for name in tokenizer_lib.BPE_FILES:
    shutil.copy(src / name, tmp_path / name)
  with open(tmp_path / "vocab.bpe", "a") as f:
    f.write("x y\n")
  with pytest.raises(ValueError, match="sha256"):
    tokenizer_lib.Tokenizer(tmp_path)
  monkeypatch.setenv(tokenizer_lib.BPE_DIR_ENV, str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="SEVLM_GPT2_BPE_DIR"):
    tokenizer_lib.Tokenizer(tokenizer_lib.default_bpe_dir())
