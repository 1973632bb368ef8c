"""What a prepared run holds: the contract between its set-up (sevlm_jax/run.py) and the steps
that read it (training, evaluation)."""

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from sevlm_jax.models import sevlm as sevlm_lib


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict  # at the current config version, checked
  ready_dir: str  # the prepared data set
  tokenizer: Any  # data.tokenizer's GPT-2 BPE with SEVLM's 4 added tokens
  vad_table: np.ndarray  # [vocab, 3] float32
  model: sevlm_lib.SEVLM
  abstract_params: Any  # the parameters' ShapeDtypeStructs
  output_ids: np.ndarray | None = None  # restricted output vocabulary (token ids), or None
