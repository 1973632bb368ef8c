"""Speed and memory figures: `python -m sevlm_jax.benchmark` (speed.py: wall clock on a device)."""
