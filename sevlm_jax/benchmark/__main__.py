"""`python -m sevlm_jax.benchmark`: see speed.py for the figures and flags."""

from absl import app

from sevlm_jax.benchmark import speed

if __name__ == "__main__":
  app.run(speed.main)
