"""Data: from raw ArtEmis files (or the procedural demo) to batches.

  sources.py    where a run's data set comes from (data.source), the data section's checks
  formats.py    the input formats (one registry entry each: detection, reader, preparation)
  prepare.py    the whole run: annotations + images -> a ready data set (also the CLI)
  annotations.py  paintings and the skip report, what every reader fills
  artemis.py    the ArtEmis CSV reader (v1, v2, the preprocessed CSV)
  sevlm_json.py the public SEVLM code's JSON reader
  artemis_text.py  ArtEmis's text preprocessing for deep nets (spelling, length filters)
  treebank.py   NLTK 3.4.5's word_tokenize rules, offline (ArtEmis's tokenizer)
  splits.py     ArtEmis's train / val / test / rest split of paintings
  dominant.py   an image's emotion histogram and its dominant emotion (three rules)
  images.py     the one image preprocessing, for ingestion, prediction and the demo page
  records.py    the ready data set's files and their readers
  record_sequence.py  random access to a split's decoded records (own records and TFDS builds)
  tfds_artemis.py  ArtEmis as a TFDS data set: the builder (prepare's records, no TensorFlow)
  tfds_source.py   a TFDS build read as a ready data set (data.source=tfds)
  demo.py       the procedurally generated art-and-emotion data set's raw files
  tokenizer.py  GPT-2 BPE + SEVLM's added tokens; target sequences
  vad.py        VAD lexicons (NRC-VAD v1 / v2.1, Warriner) and the per-token VAD table
  vad_wordnet.py  the public code's VAD rule: NLTK's tag, then WordNet's lemma (wordnet_pos)
  vad_table.py  a run's VAD table, kept in its workdir with the lexicon it came from
  output_vocab.py  the token ids the LM softmax ranges over (output_vocab)
  pipeline.py   grain training pairs and evaluation batches
  batching.py   fixed-size padded batches
  features.py   the frozen vision tower's cached patch features

Nothing is imported here, so tokenizer.py, vad.py and images.py work where
grain and array_record are not installed.
"""
