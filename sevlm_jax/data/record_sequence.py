"""Random access to one split's decoded records, over any indexable source of raw items: the
shared shape of the project's own records (records.ReadySplit) and a TFDS build's
(tfds_source.TfdsSplit); each is also a grain data source."""


class RecordSequence:
  """Subclasses set `ready_dir`, `split`, `_source` and `_len`, and say how a raw item decodes."""

  def _decode(self, raw) -> dict:
    raise NotImplementedError

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f"record {index} out of range for split {self.split!r} of {self._len} records")
    return self._decode(self._source[index])

  def __getitems__(self, indices) -> list[dict]:
    return [self[i] for i in indices]

  def __iter__(self):
    for i in range(self._len):
      yield self[i]

  def __repr__(self) -> str:
    return f"{type(self).__name__}({str(self.ready_dir)!r}, {self.split!r}, {self._len} records)"
