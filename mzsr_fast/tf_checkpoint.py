"""Reading TensorFlow 1.x checkpoints (TensorBundle format) without TensorFlow.

A checkpoint PREFIX is two or more files:

    PREFIX.index                    a sorted string table (LevelDB's SSTable
                                    layout): tensor name -> BundleEntryProto
    PREFIX.data-00000-of-0000N      the raw little-endian tensor bytes

The table is a list of blocks (entries with prefix-compressed keys, then an
array of restart offsets), each followed by a 5-byte trailer (compression
type, masked CRC-32C of the block). Its last 48 bytes are the footer: the
handles (varint offset, varint size) of the meta-index and index blocks, and
a magic number. The index block maps a separator key (at or after the last key
of a data block, before the next block's first) to that block's handle. The entry with the empty key is the bundle header
(number of shards); every other entry describes one tensor: dtype, shape,
shard, offset, size and the masked CRC-32C of its bytes.

    tensors = read_tf_checkpoint("Pretrained")   # {name: numpy array}
"""
from __future__ import annotations

import os
import struct

import numpy as np

__all__ = ["TFCheckpointError", "read_tf_checkpoint", "list_tf_checkpoint", "resolve_prefix", "crc32c", "masked_crc32c"]

_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5

# TensorFlow DataType enum values -> numpy dtypes (little-endian).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 8: np.complex64,
           9: np.int64, 10: np.bool_, 17: np.uint16, 18: np.complex128, 19: np.float16, 22: np.uint32,
           23: np.uint64}


class TFCheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of data, as LevelDB and TensorFlow compute it."""
    table = _CRC_TABLE
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The stored form of a CRC-32C: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at buf[pos]."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TFCheckpointError(f"{where}: truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes, where: str):
    """(field number, wire type, value) of each field of a protobuf message;
    value is an int for varint/fixed fields and bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise TFCheckpointError(f"{where}: truncated message")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, where)
            if pos + length > len(buf):
                raise TFCheckpointError(f"{where}: truncated message")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise TFCheckpointError(f"{where}: truncated message")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise TFCheckpointError(f"{where}: malformed message (protobuf wire type {wire})")
        yield number, wire, value


def _read_block(table: bytes, handle: bytes, path: str) -> bytes:
    """The contents of the block a handle (varint offset, varint size) points to, checksum verified."""
    offset, pos = _varint(handle, 0, path)
    size, _ = _varint(handle, pos, path)
    end = offset + size
    if end + _BLOCK_TRAILER_SIZE > len(table):
        raise TFCheckpointError(f"{path}: truncated (a block ends past the end of the file)")
    contents, kind = table[offset:end], table[end]
    if kind != 0:
        raise TFCheckpointError(f"{path}: compressed blocks (type {kind}) are not supported")
    stored = struct.unpack_from("<I", table, end + 1)[0]
    if masked_crc32c(table[offset:end + 1]) != stored:
        raise TFCheckpointError(f"{path}: bad checksum of the block at byte {offset}")
    return contents


def _block_entries(block: bytes, path: str):
    """(key, value) of each entry of a table block, keys decompressed."""
    if len(block) < 4:
        raise TFCheckpointError(f"{path}: malformed block")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise TFCheckpointError(f"{path}: malformed block")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, path)
        unshared, pos = _varint(block, pos, path)
        length, pos = _varint(block, pos, path)
        if shared > len(key) or pos + unshared + length > end:
            raise TFCheckpointError(f"{path}: malformed block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _latest_in_folder(folder: str) -> str | None:
    """The prefix a TensorFlow `checkpoint` file names (model_checkpoint_path), if any."""
    path = os.path.join(folder, "checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model_checkpoint_path":
                return os.path.join(folder, value.strip().strip('"'))
    return None


def resolve_prefix(prefix) -> str:
    """The checkpoint prefix from a prefix, its .index file, or a folder: the
    checkpoint its `checkpoint` file names, else its only .index file."""
    prefix = os.fspath(prefix)
    if os.path.isdir(prefix):
        latest = _latest_in_folder(prefix)
        found = sorted(f for f in os.listdir(prefix) if f.endswith(".index"))
        if latest is not None:
            prefix = latest
        elif len(found) == 1:
            prefix = os.path.join(prefix, found[0])
        else:
            raise TFCheckpointError(f"{prefix}: expected one TensorFlow checkpoint (.index file) or a 'checkpoint' "
                                    f"file naming one in this folder, found {len(found)} .index files")
    if prefix.endswith(".index"):
        prefix = prefix[:-len(".index")]
    if not os.path.isfile(prefix + ".index"):
        raise TFCheckpointError(f"{prefix}.index: no such file (expected a TensorFlow checkpoint prefix)")
    return prefix


def _shape(message: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for number, _, value in _proto_fields(message, where):
        if number == 2:  # TensorShapeProto.dim
            size = next((v for n, _, v in _proto_fields(value, where) if n == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif number == 3 and value:
            raise TFCheckpointError(f"{where}: tensor of unknown rank")
    return tuple(dims)


def _entry(value: bytes, where: str) -> dict:
    """A BundleEntryProto as {dtype, shape, shard, offset, size, crc32c (None if absent), sliced}."""
    entry = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    names = {1: "dtype", 3: "shard", 4: "offset", 5: "size", 6: "crc32c"}
    for number, _, field in _proto_fields(value, where):
        if number == 2:
            entry["shape"] = _shape(field, where)
        elif number == 7:
            entry["sliced"] = True
        elif number in names:
            entry[names[number]] = field
    return entry


def _read_index(prefix: str) -> tuple[dict[str, dict], int]:
    """({tensor name: entry}, number of data shards) from PREFIX.index."""
    index_path = prefix + ".index"
    with open(index_path, "rb") as f:
        table = f.read()
    if len(table) < _FOOTER_SIZE:
        raise TFCheckpointError(f"{index_path}: too short for a checkpoint index ({len(table)} bytes)")
    footer = table[-_FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != _MAGIC:
        raise TFCheckpointError(f"{index_path}: not a TensorFlow checkpoint index (bad magic number)")
    _, pos = _varint(footer, 0, index_path)  # meta-index handle: offset, size
    _, pos = _varint(footer, pos, index_path)
    index_handle = footer[pos:40]

    entries: dict[str, dict] = {}
    num_shards = 1
    for _, handle in _block_entries(_read_block(table, index_handle, index_path), index_path):
        for key, value in _block_entries(_read_block(table, handle, index_path), index_path):
            if key == b"":  # BundleHeaderProto
                for number, _, field in _proto_fields(value, index_path):
                    if number == 1:
                        num_shards = field
                    elif number == 2 and field != 0:
                        raise TFCheckpointError(f"{index_path}: big-endian checkpoints are not supported")
                continue
            if key.startswith(b"\x00"):  # the slices of a partitioned variable, under binary keys
                continue
            name = key.decode("utf-8", errors="replace")
            entries[name] = _entry(value, f"{index_path}: {name}")
    return entries, num_shards


def list_tf_checkpoint(prefix) -> dict[str, tuple[int, ...]]:
    """{variable name: shape} of every tensor of a checkpoint, read from its index alone."""
    entries, _ = _read_index(resolve_prefix(prefix))
    return {name: entry["shape"] for name, entry in entries.items()}


def read_tf_checkpoint(prefix, names=None, verify: bool = True) -> dict[str, np.ndarray]:
    """The tensors of a TensorFlow checkpoint as {variable name: numpy array}:
    all of them (without those of dtypes read here: strings, resources), or
    those of names (an iterable; absent names are left out).

    prefix: the checkpoint prefix (PREFIX.index and PREFIX.data-* next to
    it), the .index path, or a folder with one checkpoint. verify checks the
    CRC-32C of every tensor that records one. Raises TFCheckpointError, naming
    the file, for a truncated or corrupt file, a bad checksum, or a tensor
    type this reader does not handle.
    """
    prefix = resolve_prefix(prefix)
    index_path = prefix + ".index"
    entries, num_shards = _read_index(prefix)
    shards: dict[int, bytes] = {}
    tensors = {}
    if names is None:
        wanted = {n: e for n, e in entries.items() if e["dtype"] in _DTYPES}
    else:
        wanted = {n: entries[n] for n in names if n in entries}
    for name, entry in wanted.items():
        where = f"{index_path}: {name}"
        if entry["sliced"]:
            raise TFCheckpointError(f"{where}: partitioned (sliced) variables are not supported")
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise TFCheckpointError(f"{where}: unsupported TensorFlow dtype {entry['dtype']}")
        shard = entry["shard"]
        if shard >= num_shards:
            raise TFCheckpointError(f"{where}: data shard {shard}, but the header says {num_shards} shard(s)")
        data_path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
        if shard not in shards:
            if not os.path.isfile(data_path):
                raise TFCheckpointError(f"{data_path}: no such file (data shard {shard} of {index_path})")
            with open(data_path, "rb") as f:
                shards[shard] = f.read()
        data = shards[shard]
        start, size = entry["offset"], entry["size"]
        if start + size > len(data):
            raise TFCheckpointError(f"{data_path}: truncated ({name} ends at byte {start + size}, the file has "
                                    f"{len(data)})")
        raw = data[start:start + size]
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if count * np.dtype(dtype).itemsize != size:
            raise TFCheckpointError(f"{where}: {size} bytes do not hold a {np.dtype(dtype).name} tensor of shape "
                                    f"{list(entry['shape'])}")
        if verify and entry["crc32c"] is not None and masked_crc32c(raw) != entry["crc32c"]:
            raise TFCheckpointError(f"{data_path}: bad checksum of {name} (bytes {start}..{start + size})")
        tensors[name] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(entry["shape"]).copy()
    return tensors
