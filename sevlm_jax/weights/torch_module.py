"""Reading a whole pickled object (torch.save(model) of an nn.Module, or a plain pickle) without torch.

torch.save(model) pickles the module itself: its class by name, then its __dict__ (the
`_parameters`, `_buffers` and `_modules` OrderedDicts and the hyper-parameters as attributes).
The unpickler here rebuilds only what the caller allows:

- a class the caller names becomes a `PickledObject` (its class path and its pickled state;
  never imported, never called), so the caller reads the object graph as data;
- tensors become numpy arrays (torch_zip's rebuild functions), in both torch.save formats: the
  zip archive (PyTorch >= 1.6) and the legacy stream (magic number, protocol version, system
  info, the object's pickle, its storage keys, then each storage as its element count and bytes),
  which older PyTorch wrote (ArtEmis's experiments used 1.3.1);
- OrderedDict and set (module bookkeeping) are themselves; a few globals that old PyTorch
  pickled into every module (the `_backend` of PyTorch < 1.5) read as None;
- any other global stops the load with a CheckpointError naming it, so nothing unexpected is
  ever created or run.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Collection
from typing import Any

import numpy as np

from sevlm_jax.errors import CheckpointError
from sevlm_jax.weights import torch_zip

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION

# Globals that hold no data here: old modules' `_backend` (rebuilt by calling this function).
_INERT = {("torch.nn.backends.thnn", "_get_thnn_function_backend")}


class PickledObject:
  """An instance of an allowed class as the pickle describes it: `class_path` ("module.Name"),
  the positional arguments of its creation and its pickled state (a module's __dict__)."""
  class_path = ""
  args: tuple = ()  # class-level defaults: NEWOBJ creates instances without calling __init__
  state: Any = None

  def __init__(self, *args):
    self.args = args

  def __setstate__(self, state):
    self.state = state

  def get(self, key: str, default: Any = None) -> Any:
    """An attribute from the pickled __dict__."""
    return self.state.get(key, default) if isinstance(self.state, dict) else default

  def __repr__(self):
    return f"PickledObject({self.class_path})"


def _record_class(class_path: str) -> type:
  return type(class_path.rsplit(".", 1)[-1], (PickledObject,),
              {"class_path": class_path, "__module__": "torch_module.record"})


def _reconstructor(cls, base, state):
  """copyreg._reconstructor (protocols 0 and 1): only for allowed classes over `object`."""
  if not (isinstance(cls, type) and issubclass(cls, PickledObject) and base is object and state is None):
    raise pickle.UnpicklingError("copyreg._reconstructor of something other than an allowed class")
  return cls()


class _Unpickler(pickle.Unpickler):
  """Allowed classes become PickledObject records; storages come from `read_storage` (None: a
  plain pickle, which has none). skim: tensors read as None and storages are only recorded (key ->
  dtype, in `storage_dtypes`), to walk a legacy file's pickle before its storages are located."""

  def __init__(self, file, classes: Collection[str], read_storage=None, skim: bool = False):
    super().__init__(file)
    self._records = {path: _record_class(path) for path in classes}
    self._read_storage = read_storage
    self._skim = skim
    self.storage_dtypes: dict[str, Any] = {}
    self.refused: str | None = None

  def find_class(self, module, name):
    path = f"{module}.{name}"
    if path in self._records:
      return self._records[path]
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name == "set":
      return set
    if module in ("copyreg", "copy_reg") and name == "_reconstructor":
      return _reconstructor
    if module in ("builtins", "__builtin__") and name == "object":
      return object  # _reconstructor's base
    if (module, name) in _INERT:
      return lambda *_: None
    storages = self._read_storage is not None or self._skim
    if storages and module == "torch._utils" and name in _REBUILDERS:
      return (lambda *_: None) if self._skim else _REBUILDERS[name]
    if storages and module == "torch" and name.endswith("Storage"):
      return name  # a storage type, read by persistent_load
    self.refused = path
    raise pickle.UnpicklingError(f"unexpected class {path}")

  def persistent_load(self, pid):
    if self._read_storage is None and not self._skim:
      raise pickle.UnpicklingError("a persistent id in a plain pickle")
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
      return pid[1]  # legacy format: a module class with its source, for torch's own checks
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    storage_type, key = pid[1], str(pid[2])
    if len(pid) == 6 and pid[5] is not None:
      raise pickle.UnpicklingError("a storage view (PyTorch < 0.4); not supported")
    if storage_type == "BFloat16Storage":
      dtype = np.dtype(torch_zip._bfloat16())  # pylint: disable=protected-access
    elif storage_type in torch_zip._STORAGE_DTYPES:  # pylint: disable=protected-access
      dtype = np.dtype(torch_zip._STORAGE_DTYPES[storage_type])  # pylint: disable=protected-access
    else:
      raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    if self._skim:
      self.storage_dtypes[key] = dtype
      return None
    return self._read_storage(key, dtype)


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
  """torch_zip's rebuild, once the view is known to lie inside its storage (a damaged file could
  otherwise make it read past the storage's end)."""
  if isinstance(storage, np.ndarray) and all(n > 0 for n in size):
    last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
    if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
      raise pickle.UnpicklingError(f"a tensor of shape {tuple(size)} past the end of its storage")
  return torch_zip._rebuild_tensor(storage, storage_offset, size, stride, *rest)  # pylint: disable=protected-access


_REBUILDERS = {
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_parameter": torch_zip._rebuild_parameter,  # pylint: disable=protected-access
    "_rebuild_parameter_with_state": torch_zip._rebuild_parameter,  # pylint: disable=protected-access
}


def _failure(unpickler: _Unpickler, path, what: str, e: Exception) -> CheckpointError:
  if unpickler.refused:
    return CheckpointError(f"{path}: holds an object of class {unpickler.refused}, which {what} does not "
                           "have; is this the right file?")
  return CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})")


def _unpickle(data: bytes, path, what: str, classes: Collection[str], read_storage=None) -> Any:
  unpickler = _Unpickler(io.BytesIO(data), classes, read_storage)
  try:
    return unpickler.load()
  except Exception as e:  # pylint: disable=broad-except  # a damaged pickle raises many types
    raise _failure(unpickler, path, what, e) from None


def _read_bytes(path, what: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no such file; give the path of {what}") from None
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read ({e.strerror}); give the path of {what}") from None


def load_pickle(path: str | os.PathLike, classes: Collection[str], what: str) -> Any:
  """The object of a plain pickle file (pickle.dump), with `classes` ("module.Name") as
  PickledObject records. what: names the file in errors ("ArtEmis's vocabulary")."""
  data = _read_bytes(path, what)
  if data[:4] == b"PK\x03\x04":
    raise CheckpointError(f"{path}: a zip archive (a torch.save file?), not {what}; is this the right file?")
  return _unpickle(data, path, what, classes)


def load_module(path: str | os.PathLike, classes: Collection[str], what: str) -> Any:
  """The object torch.save wrote at `path` (either format), with `classes` as PickledObject
  records and tensors as numpy arrays."""
  data = _read_bytes(path, what)
  if data[:4] == b"PK\x03\x04":
    return _load_zip(path, data, classes, what)
  return _load_legacy(path, data, classes, what)


def _load_zip(path, data: bytes, classes, what: str) -> Any:
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
  except zipfile.BadZipFile as e:
    raise CheckpointError(f"{path}: a damaged zip archive ({e}); download {what} again") from None
  pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    raise CheckpointError(f"{path}: a zip archive without exactly one '<name>/data.pkl'; not a torch.save file")
  root = pickles[0][:-len("data.pkl")]
  if root + "byteorder" in names and archive.read(root + "byteorder").decode().strip() != "little":
    raise CheckpointError(f"{path}: big-endian tensors are not supported")
  storages = {}

  def read_storage(key: str, dtype) -> np.ndarray:
    if (key, dtype) not in storages:
      try:
        storages[key, dtype] = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=dtype)
      except (KeyError, zipfile.BadZipFile) as e:
        raise pickle.UnpicklingError(f"storage {key}: {e}") from None
    return storages[key, dtype]

  return _unpickle(archive.read(pickles[0]), path, what, classes, read_storage)


def _load_legacy(path, data: bytes, classes, what: str) -> Any:
  """The legacy stream: three header pickles, the object's pickle, the sorted storage keys, then
  each storage as int64 element count and raw little-endian bytes."""
  stream = io.BytesIO(data)
  try:
    header = [_Unpickler(stream, ()).load() for _ in range(3)]
  except Exception:  # pylint: disable=broad-except  # not a pickle stream at all: not this format
    header = []
  if len(header) != 3 or header[0] != _LEGACY_MAGIC:
    raise CheckpointError(f"{path}: not a torch.save file (neither a zip archive nor PyTorch's legacy "
                          f"format); give the path of {what}")
  if header[1] != _LEGACY_PROTOCOL or not (isinstance(header[2], dict) and header[2].get("little_endian")):
    raise CheckpointError(f"{path}: legacy torch.save protocol {header[1]} or a big-endian file; not supported")
  object_start = stream.tell()
  # Walk the object's pickle once to learn where it ends and each storage's dtype; the storages
  # follow it, so only then can they be located and the object rebuilt with its tensors.
  skim = _Unpickler(stream, classes, skim=True)
  try:
    skim.load()
    object_end = stream.tell()
    keys = _Unpickler(stream, ()).load()
  except Exception as e:  # pylint: disable=broad-except  # a damaged pickle raises many types
    raise _failure(skim, path, what, e) from None
  located = {}  # key -> (byte offset, dtype, element count)
  position = stream.tell()
  for key in map(str, keys):
    if key not in skim.storage_dtypes or position + 8 > len(data):
      raise CheckpointError(f"{path}: damaged or truncated at storage {key}; download {what} again")
    (numel,) = struct.unpack("<q", data[position:position + 8])
    dtype = skim.storage_dtypes[key]
    located[key] = (position + 8, dtype, numel)
    position += 8 + numel * dtype.itemsize
  if position > len(data):
    raise CheckpointError(f"{path}: truncated ({len(data)} bytes, its storages need {position}); "
                          f"download {what} again")

  def read_storage(key: str, dtype) -> np.ndarray:
    if key not in located:
      raise pickle.UnpicklingError(f"storage {key} is not in the file")
    start, stored_dtype, numel = located[key]
    if dtype != stored_dtype:
      raise pickle.UnpicklingError(f"storage {key} read as {dtype} and {stored_dtype}")
    return np.frombuffer(data, dtype=dtype, count=numel, offset=start)

  return _unpickle(data[object_start:object_end], path, what, classes, read_storage)
