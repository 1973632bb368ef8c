"""Reading PyTorch's `torch.save` files (zip format, PyTorch >= 1.6) into numpy, without torch.

A torch.save file is a zip archive: `<name>/data.pkl` pickles the saved object, whose tensors
point by key at raw little-endian storages `<name>/data/<key>`. The unpickler here is
restricted: tensors are rebuilt from those storages with numpy (`_rebuild_tensor_v2` and
friends), OrderedDict is allowed, and every other global the pickle names becomes an inert
placeholder (never imported, never called), so optimiser and scheduler states load as
harmless data and no code from the file ever runs.
"""

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np

from sevlm_jax.errors import CheckpointError

# torch's legacy storage classes, by the name the pickle gives, and their element types.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _bfloat16():
  import ml_dtypes  # pylint: disable=import-outside-toplevel  (a dependency of jax)
  return ml_dtypes.bfloat16


class _Opaque:
  """Stands for any object the pickle names that is not a tensor: takes anything, does nothing."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state


def _opaque_class(module: str, name: str) -> type:
  return type(name, (_Opaque,), {"__module__": f"torch_zip.opaque.{module}"})


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
  """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied into a numpy array."""
  if not isinstance(storage, np.ndarray):
    raise pickle.UnpicklingError("a tensor whose storage is not a plain CPU storage")
  itemsize = storage.dtype.itemsize
  if not size:
    return storage[storage_offset].copy()
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride),
      writeable=False)
  return np.array(view)


def _rebuild_parameter(data, *_):
  return data


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, read_storage):
    super().__init__(file)
    self._read_storage = read_storage

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and (name in _STORAGE_DTYPES or name == "BFloat16Storage"):
      return name  # a storage type, read by persistent_load
    return _opaque_class(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, _numel = pid
    if storage_type == "BFloat16Storage":
      dtype = _bfloat16()
    elif isinstance(storage_type, str) and storage_type in _STORAGE_DTYPES:
      dtype = _STORAGE_DTYPES[storage_type]
    else:  # torch >= 2 typed storages name the dtype instead; not written by torch.save today
      raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    return self._read_storage(str(key), dtype)


def load(path) -> Any:
  """The object saved by torch.save at `path`, with tensors as numpy arrays."""
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise CheckpointError(
        f"{path}: not a zip-format torch.save file (saved by PyTorch < 1.6, or not a PyTorch"
        " file); load it with torch and save it again (torch.save) or as .safetensors") from None
  with archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise CheckpointError(f"{path}: a zip archive without exactly one '<name>/data.pkl'; not a"
                            " torch.save file")
    root = pickles[0][:-len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in names and archive.read(byteorder).decode().strip() != "little":
      raise CheckpointError(f"{path}: big-endian tensors are not supported")

    storages = {}  # tensors sharing a storage (a tied lm_head) read it once, as torch.load does

    def read_storage(key: str, dtype) -> np.ndarray:
      if (key, dtype) not in storages:
        storages[key, dtype] = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=dtype)
      return storages[key, dtype]

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), read_storage).load()
