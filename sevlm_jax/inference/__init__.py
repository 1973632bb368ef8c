"""Inference: KV-cached decoding and its text parsing (decode.py), the Python API (predictor.py),
the local demo page (serve.py). Nothing here imports evaluation.

  from sevlm_jax.inference import Predictor
"""

__all__ = ["Predictor"]


def __getattr__(name: str):
  # Lazy, so that importing decode (as evaluation and run set-up do) does not load the predictor.
  if name == "Predictor":
    from sevlm_jax.inference.predictor import Predictor  # pylint: disable=import-outside-toplevel
    return Predictor
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
