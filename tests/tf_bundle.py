"""A TensorBundle (TensorFlow checkpoint) writer for the reader's tests:
uncompressed blocks with prefix-compressed keys and restart points, an index
of one or several data blocks, one or several data shards, every tensor with
its CRC-32C. Written from the format description in mzsr_fast/tf_checkpoint.py."""
import struct

import numpy as np

from mzsr_fast.tf_checkpoint import masked_crc32c

_DTYPE_CODES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9,
                np.dtype(np.complex64): 8}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(payload)
    if wire == 5:
        return key + struct.pack("<I", payload)
    return key + _varint(len(payload)) + payload


def _block(entries, restart_interval: int = 16) -> bytes:
    """A table block of sorted (key, value) pairs: each key shares its prefix
    with the previous one except at a restart point (every restart_interval)."""
    body, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(body))
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(body) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _with_trailer(contents: bytes) -> bytes:
    return contents + b"\x00" + struct.pack("<I", masked_crc32c(contents + b"\x00"))


def write_bundle(prefix, tensors: dict, crc: bool = True, shards: int = 1, entries_per_block: int = 1000,
                 restart_interval: int = 16) -> None:
    """Write {name: numpy array} as PREFIX.index + PREFIX.data-0000K-of-0000N
    (tensors dealt to the shards in turn; entries_per_block entries per data
    block of the index table)."""
    data = [bytearray() for _ in range(shards)]
    entries = [(b"", _field(1, 0, shards) + _field(3, 2, _field(1, 0, 1)))]  # header: shards, version 1
    for i, name in enumerate(sorted(tensors)):
        array = np.array(tensors[name], order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        shard = i % shards
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in array.shape)
        entry = (_field(1, 0, _DTYPE_CODES[array.dtype]) + _field(2, 2, shape)
                 + (_field(3, 0, shard) if shard else b"")
                 + (_field(4, 0, len(data[shard])) if data[shard] else b"") + _field(5, 0, len(raw)))
        if crc:
            entry += _field(6, 5, masked_crc32c(raw))
        entries.append((name.encode(), entry))
        data[shard] += raw
    table = bytearray()
    index = []
    for start in range(0, len(entries), entries_per_block):
        chunk = entries[start:start + entries_per_block]
        block = _block(chunk, restart_interval)
        index.append((chunk[-1][0] + b"\xff", _varint(len(table)) + _varint(len(block))))  # a separator key
        table += _with_trailer(block)
    meta_handle = _varint(len(table)) + _varint(len(_block([])))
    table += _with_trailer(_block([]))
    index_block = _block(index, restart_interval)
    index_handle = _varint(len(table)) + _varint(len(index_block))
    table += _with_trailer(index_block)
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    with open(f"{prefix}.index", "wb") as f:
        f.write(bytes(table) + footer)
    for shard in range(shards):
        with open(f"{prefix}.data-{shard:05d}-of-{shards:05d}", "wb") as f:
            f.write(bytes(data[shard]))


def mzsr_variables(state: dict, adam_slots: bool = True) -> dict:
    """The reference's variable names and layouts for an MZSRNet state dict
    (kernels HWIO), with Adam slots and counters as the reference saves them."""
    out = {}
    for i in range(8):
        weight = state[f"layers.{i}.weight"].numpy()
        bias = state[f"layers.{i}.bias"].numpy()
        for suffix, values in (("kernel", weight.transpose(2, 3, 1, 0)), ("bias", bias)):
            name = f"MODEL/conv{i + 1}/{suffix}"
            out[name] = np.ascontiguousarray(values, dtype=np.float32)
            if adam_slots:
                out[name + "/Adam"] = np.full_like(out[name], 1e-5)
                out[name + "/Adam_1"] = np.full_like(out[name], 1e-9)
    out["beta1_power"] = np.array(0.9, dtype=np.float32)
    out["global_step"] = np.array(7, dtype=np.int32)
    return out
