"""`python -m sevlm_jax.benchmark`: the flags of the command; speed.py has the figures.

Defined here, not in speed.py, so that importing the figures claims no flag names.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from sevlm_jax.benchmark import aot
from sevlm_jax.benchmark import speed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sevlm.py", "Model and optimiser config.")
_VARIANTS = flags.DEFINE_list("variants", ["optimized", "baseline"], "optimized and/or baseline.")
_FIGURES = flags.DEFINE_list("figures", ["train_cached", "train_tower", "decode", "memory"],
                             "train_cached, train_tower, decode, pipeline, memory.")
_PAIRS = flags.DEFINE_integer("pairs", 32, "Images per train batch (2 sequences each); decoding "
                              "takes 2 * pairs images.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 30, "Tokens per training sequence.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 25, "Tokens to decode.")
_ITERS = flags.DEFINE_integer("iters", 30, "Timed runs per figure (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed runs first (compilation included).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Trace the optimized variant here.")
_PIPELINE_IMAGES = flags.DEFINE_integer("pipeline_images", 256, "Demo images for `pipeline`.")
_STEPS_PER_CHECK = flags.DEFINE_list("steps_per_check", [], "decode, optimized variant: values of "
                                     "eval.steps_per_check to compare (default: the config's).")

flags.DEFINE_enum("aot", None, list(aot.GPUS), "Compile for this GPU without one and print "
                  "launches, program memory and roofline estimates instead of timing "
                  "(benchmark/aot.py).")
flags.DEFINE_string("aot_dump_dir", None, "Keep XLA's dumps here (one folder per program); "
                    "default: a temporary folder, removed.")
flags.DEFINE_bool("aot_capture_while", False, "--aot: let command buffers (CUDA graphs) capture "
                  "while loops too (XLA's --xla_gpu_enable_command_buffer with WHILE); off "
                  "until a GPU run confirms it (benchmarks/run_gpu.sh, stage cbwhile).")


if __name__ == "__main__":
  app.run(speed.main)
