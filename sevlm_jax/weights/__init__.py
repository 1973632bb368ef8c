"""Import of pretrained weights (load.py): strict key maps (mapping.py) for GPT-2 (gpt2.py),
CLIP (clip.py) and the authors' released SEVLM (sevlm.py), read from local files or the hub
(io.py; PyTorch zip files without torch: torch_zip.py).

  from sevlm_jax.weights import load_pretrained
  params = load_pretrained(params, config, gpt2="distilgpt2", clip="openai/clip-vit-base-patch16")
"""

from sevlm_jax.weights.load import NEW_IN_SEVLM, load_pretrained

__all__ = ["NEW_IN_SEVLM", "load_pretrained"]
