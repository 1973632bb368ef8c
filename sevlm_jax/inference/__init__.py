"""Inference: KV-cached decoding and its text parsing (decode.py), the Python API (predictor.py),
the local demo page (serve.py). Nothing here imports evaluation.

  from sevlm_jax.inference.predictor import Predictor
"""
