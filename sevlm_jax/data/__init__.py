"""Data: from raw ArtEmis files (or the procedural demo) to batches.

  prepare.py    the whole run: annotations + images -> a ready data set (also the CLI)
  artemis.py    ingestion: ArtEmis CSVs / the public SEVLM JSON -> paintings and a skip report
  artemis_text.py  ArtEmis's text preprocessing for deep nets (spelling, length filters)
  treebank.py   NLTK 3.4.5's word_tokenize rules, offline (ArtEmis's tokenizer)
  splits.py     ArtEmis's train / val / test / rest split of paintings
  dominant.py   an image's emotion histogram and its dominant emotion (three rules)
  images.py     the one image preprocessing, for ingestion, prediction and the demo page
  records.py    the ready data set's files and their readers
  demo.py       the procedurally generated art-and-emotion data set, same ingestion
  tokenizer.py  GPT-2 BPE + SEVLM's added tokens; target sequences
  vad.py        VAD lexicons (NRC-VAD v1 / v2.1, Warriner) and the per-token VAD table
  pipeline.py   grain training pairs and evaluation batches
  batching.py   fixed-size padded batches
  features.py   the frozen vision tower's cached patch features

Nothing is imported here, so tokenizer.py, vad.py and images.py work where
grain and array_record are not installed.
"""
