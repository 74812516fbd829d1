"""A minimal TensorBundle (TensorFlow checkpoint) writer for the reader's tests:
one data shard, one uncompressed data block, every tensor with its CRC-32C.
Written from the format description in mzsr_fast/tf_checkpoint.py."""
import struct

import numpy as np

from mzsr_fast.tf_checkpoint import masked_crc32c

_DTYPE_CODES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9}


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


def _block(entries) -> bytes:
    """A table block of (key, value) pairs (no prefix sharing), one restart point."""
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1)


def _with_trailer(contents: bytes) -> bytes:
    return contents + b"\x00" + struct.pack("<I", masked_crc32c(contents + b"\x00"))


def write_bundle(prefix, tensors: dict, crc: bool = True) -> None:
    """Write {name: numpy array} as PREFIX.index + PREFIX.data-00000-of-00001."""
    data = bytearray()
    entries = [(b"", _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1)))]  # header: 1 shard, version 1
    for name in sorted(tensors):
        array = np.array(tensors[name], order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in array.shape)
        entry = (_field(1, 0, _DTYPE_CODES[array.dtype]) + _field(2, 2, shape)
                 + (_field(4, 0, len(data)) if data else b"") + _field(5, 0, len(raw)))
        if crc:
            entry += _field(6, 5, masked_crc32c(raw))
        entries.append((name.encode(), entry))
        data += raw
    table = bytearray()
    data_block = _block(entries)
    data_handle = _varint(0) + _varint(len(data_block))
    table += _with_trailer(data_block)
    meta_handle = _varint(len(table)) + _varint(len(_block([])))
    table += _with_trailer(_block([]))
    index_block = _block([(entries[-1][0], data_handle)])
    index_handle = _varint(len(table)) + _varint(len(index_block))
    table += _with_trailer(index_block)
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    with open(f"{prefix}.index", "wb") as f:
        f.write(bytes(table) + footer)
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:
        f.write(bytes(data))


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
