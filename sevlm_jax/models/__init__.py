"""SEVLM network modules (Flax linen) and their configuration."""

from sevlm_jax.models.config import (DecoderConfig, HeadConfig, ModelConfig, VADConfig,
                                     VisionConfig, model_config_dict)
from sevlm_jax.models.sevlm import SEVLM, init_params

__all__ = [
    "DecoderConfig", "HeadConfig", "ModelConfig", "VADConfig", "VisionConfig",
    "model_config_dict", "SEVLM", "init_params",
]
