r"""Read speed of the two on-disk formats of one data set, measured side by side in one run.

  python benchmarks/tfds_read_speed.py [--images=400] [--size=224] [--rounds=5]

Makes the demo's raw files (sevlm_jax.data.demo), prepares them once as the project's own ready
data set (prepare) and once as the TFDS build (sevlm_jax.data.tfds_artemis, the same records),
then reads every record of the train split in a shuffled order, alternating the formats round by
round so that other load on the machine falls on both alike. Prints one JSON line per figure:
ms per record (median over rounds) for
  own        records.load_split: msgpack + zstd in array_record, pixels stored raw
  tfds       tfds_source.TfdsSplit: what data.source=tfds trains from (TFDS example proto,
             PNG decode, conversion to the project's record)
  tfds_raw   tfds.data_source's own examples, no conversion (what another pipeline reads)
and each format's bytes on disk. Needs the [tfds] extra; no TensorFlow.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import numpy as np

from sevlm_jax.data import demo
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import tfds_artemis
from sevlm_jax.data import tfds_source


def _ms_per_record(source, order) -> float:
  t0 = time.perf_counter()
  for i in order:
    source[int(i)]
  return (time.perf_counter() - t0) * 1e3 / len(order)


def _machine() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    model = platform.processor() or platform.machine()
  return f"{model}, {os.cpu_count()} CPUs"


def _disk_bytes(folder: pathlib.Path, pattern: str) -> int:
  return sum(p.stat().st_size for p in folder.glob(pattern))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=400, help="paintings of the demo data set")
  parser.add_argument("--size", type=int, default=224, help="stored image size")
  parser.add_argument("--rounds", type=int, default=5, help="full passes per format")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="tfds_read_speed_") as tmp:
    tmp = pathlib.Path(tmp)
    raw = demo.write_raw(tmp / "raw", seed=0, num_images=args.images, annotators=5)
    csv_path, images = raw / demo.CSV_NAME, raw / "images"
    ready, _ = prepare.prepare_ready(csv_path, images, tmp / "ready", fmt="v1",
                                     image_size=args.size, text_preprocessing="raw", workers=0,
                                     progress=False, log=lambda *a: None)
    config = tfds_artemis.ArtemisConfig(name="bench", csv=(str(csv_path),), images=str(images),
                                        image_size=args.size, text_preprocessing="raw")
    build = tfds_artemis.build(tmp / "tfds", config, workers=0, verbose=False)
    import tensorflow_datasets as tfds  # after the build: the [tfds] extra is there
    sources = {"own": records.load_split(ready, "train"),
               "tfds": tfds_source.TfdsSplit(build, "train"),
               "tfds_raw": tfds.data_source("artemis/bench", data_dir=str(tmp / "tfds"))["train"]}
    n = len(sources["own"])
    assert all(len(s) == n for s in sources.values())
    times = {k: [] for k in sources}
    for r in range(args.rounds):
      order = np.random.default_rng(r).permutation(n)
      for name, source in sources.items():
        source[int(order[0])]  # opened and warm before timing
        times[name].append(_ms_per_record(source, order))
    machine = _machine()
    sizes = {"own": _disk_bytes(ready, "train.array_record"),
             "tfds": _disk_bytes(build, "artemis-train.array_record-*")}
    for name, values in times.items():
      print(json.dumps({"figure": "read_ms_per_record", "format": name,
                        "median": round(statistics.median(values), 4),
                        "rounds": [round(v, 4) for v in values], "records": n,
                        "image_size": args.size, "machine": machine}))
    print(json.dumps({"figure": "train_split_bytes", **sizes, "records": n}))


if __name__ == "__main__":
  main()
