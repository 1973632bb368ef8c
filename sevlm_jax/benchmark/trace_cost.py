"""What the traced decoding loop (attention map and VAD per token) costs beside the default one.

  python -m sevlm_jax.benchmark.trace_cost [--preset=base] [--batch=8] [--new_tokens=25]

Random weights, precomputed patches (the vision tower is the same for both and left out), greedy
decoding with the KV cache and no early exit, so both loops run the same number of steps.
Prints the median time of each loop, their ratio, and beam search's for comparison.
"""


from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from sevlm_jax import vocab
from sevlm_jax.benchmark import speed
from sevlm_jax.inference import decode
from sevlm_jax.models import SEVLM, ModelConfig, init_params, model_config_dict

_PRESET = flags.DEFINE_enum("preset", "base", ["base", "tiny"], "Model size.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images decoded at once.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 25, "Tokens decoded per image.")
_ITERS = flags.DEFINE_integer("iters", 5, "Timed runs per loop (the median is printed).")


def main(argv):
  del argv
  config = ModelConfig.from_dict(model_config_dict(_PRESET.value))
  params = jax.jit(lambda r: init_params(config, r))(jax.random.key(0))
  model = SEVLM(config)
  b, p = _BATCH.value, config.vision.num_patches
  patches = jax.random.normal(jax.random.key(1), (b, p, config.decoder.width))
  table = jnp.zeros((config.decoder.vocab_size, 3))
  prompt = [vocab.BOS_ID, 262, 9942, 318]
  kw = dict(max_new_tokens=_NEW_TOKENS.value, because_id=vocab.PREFIX_ID,
            eos_id=vocab.PREFIX_ID, pad_id=vocab.PAD_ID, steps_per_check=0)
  runs = {
      "default": lambda: decode.generate(model, params, patches, table, prompt, **kw)[0],
      "traced": lambda: decode.generate_details(model, params, patches, table, prompt, trace=True,
                                                **kw)["tokens"],
      "beam4": lambda: decode.generate_details(model, params, patches, table, prompt,
                                               method="beam", beam_width=4, **kw)["tokens"],
  }
  times = {name: speed.median_seconds(fn, _ITERS.value, warmup=1)  # warm-up: the compile
           for name, fn in runs.items()}
  print(f"{_PRESET.value} model, {b} images x {_NEW_TOKENS.value} tokens, "
        f"{jax.devices()[0].platform}:")
  for name, t in times.items():
    print(f"  {name:8s} {1e3 * t:9.1f} ms  ({t / times['default']:.2f}x default)")


if __name__ == "__main__":
  app.run(main)
