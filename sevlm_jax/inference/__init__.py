"""Inference: KV-cached decoding (decode.py) and its sentences (sentences.py), traces of where
the model looked (trace.py), the Python API (predictor.py), the local demo page (serve.py), and
model directories (model_dir.py read, export.py written, card_metadata.py their card's front
matter), on the Hugging Face hub (hub.py both ways, publish.py a checked push) and as a Hugging
Face Space (space.py). Nothing here imports evaluation.

  from sevlm_jax.inference.predictor import Predictor
"""
