"""SEVLM's pure loss functions, importable as `sevlm_jax.losses` (they live in training/losses.py).

  from sevlm_jax import losses
  losses.lm_loss(logits_BxLxV, labels_BxL)
"""

from sevlm_jax.training.losses import *  # noqa: F401,F403
from sevlm_jax.training.losses import __all__  # noqa: F401
