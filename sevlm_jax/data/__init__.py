"""Data: ArtEmis ingestion, the procedural demo data set, tokenizer, VAD lexicon, grain pipeline.

  tokenizer.py  GPT-2 BPE + SEVLM's added tokens; target sequences
  vad.py        VAD lexicons (NRC-VAD v1 / v2.1, Warriner) and the per-token VAD table
  artemis.py    raw ArtEmis / SEVLM JSON + images -> ready data set (prepare.py is its CLI)
  records.py    the ready data set's files and the reader (load_split)
  demo.py       procedurally generated art-and-emotion data set, same ingestion
  images.py     the one image preprocessing (ingestion and inference)
  pipeline.py   grain training pairs and evaluation batches

Nothing is imported here, so tokenizer.py, vad.py and images.py work where
grain and array_record are not installed.
"""
