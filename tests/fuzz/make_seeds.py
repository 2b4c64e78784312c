#!/usr/bin/env python3
"""Writes the binary and JSON seed corpora of the fuzz targets (standard library only).

Run from anywhere: python3 tests/fuzz/make_seeds.py. The TOML seeds are plain committed files;
files this script writes are committed too, so CI never runs it. Each corpus holds valid inputs
and slightly broken ones, so mutation starts on both sides of every check.
"""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)] laid out in order."""
    header, blobs, at = {}, b"", 0
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(blob)]}
        blobs += blob
        at += len(blob)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blobs


def write_safetensors_seeds():
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    put("safetensors_fuzz", "valid_two_tensors",
        safetensors([("a", "F32", [2, 2], f32), ("b", "BF16", [2], b"\x80\x3f\x00\x40")],
                    {"format": "pt"}))
    put("safetensors_fuzz", "valid_empty_tensor",
        safetensors([("e", "F16", [0, 3], b""), ("i", "I64", [1], struct.pack("<q", 7))]))
    put("safetensors_fuzz", "valid_scalar_u8", safetensors([("s", "U8", [], b"\x05")], pad=False))
    put("safetensors_fuzz", "bad_truncated_data",
        safetensors([("a", "F32", [2, 2], f32)])[:-3])
    bad = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    put("safetensors_fuzz", "bad_overlap", struct.pack("<Q", len(bad)) + bad + b"\0" * 12)
    put("safetensors_fuzz", "bad_header_length", struct.pack("<Q", 1 << 62) + b"{}")


def write_hf_index_seeds():
    # hf_index_fuzz writes these shards next to the fuzzed index (see hf_index_fuzz.cc).
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    put("hf_index_fuzz", "valid_two_shards",
        json.dumps({"metadata": {"total_size": 28}, "weight_map": {"a": s1, "b": s1, "c": s2}}))
    put("hf_index_fuzz", "valid_no_metadata", json.dumps({"weight_map": {"c": s2}}))
    put("hf_index_fuzz", "bad_wrong_shard", json.dumps({"weight_map": {"a": s2}}))
    put("hf_index_fuzz", "bad_path_escape", json.dumps({"weight_map": {"a": "../" + s1}}))
    put("hf_index_fuzz", "bad_duplicate_key", '{"weight_map": {"a": "%s", "a": "%s"}}' % (s1, s1))


def dstok(tokens, vocab, token_bytes=2, docs=None, mask=None, version=1):
    flags = 1 if mask is not None else 0
    num_docs = len(docs) - 1 if docs else 0
    head = b"DSTOK001" + struct.pack("<IIQQQQ", version, token_bytes, vocab, len(tokens),
                                     num_docs, flags)
    head += b"\0" * (64 - len(head))
    body = struct.pack("<%d%s" % (len(tokens), "H" if token_bytes == 2 else "I"), *tokens)
    if docs:
        body += struct.pack("<%dQ" % len(docs), *docs)
    if mask is not None:
        body += bytes(mask)
    return head + body


def write_token_file_seeds():
    put("token_file_fuzz", "valid_stream_u16", dstok([1, 2, 3, 258], 259))
    put("token_file_fuzz", "valid_docs_mask",
        dstok([5, 6, 7, 8, 9], 10, docs=[0, 2, 5], mask=[0, 1, 1, 0, 1]))
    put("token_file_fuzz", "valid_u32", dstok([70000, 1], 70001, token_bytes=4, docs=[0, 2]))
    put("token_file_fuzz", "bad_token_too_large", dstok([1, 300], 259))
    put("token_file_fuzz", "bad_docs_not_monotonic", dstok([1, 2, 3], 4, docs=[0, 3, 2, 3]))
    put("token_file_fuzz", "bad_truncated", dstok([1, 2, 3], 4, docs=[0, 3])[:-5])


def ckpt_index(version, size=8192, block=4096):
    data_crc = 0x1234
    f = {"name": "rank-00000.h5", "size": size, "crc32": data_crc}
    if version >= 2:
        # Checksums of a file of zero bytes, so the block CRCs combine to the whole-file CRC.
        zero = bytes(size)
        f["crc32"] = zlib.crc32(zero)
        f["block_bytes"] = block
        f["block_crc32"] = [zlib.crc32(zero[i:i + block]) for i in range(0, size, block)]
    piece = lambda off, n, at: {"file": "rank-00000.h5", "dataset": "/param/w", "offset": off,
                                "numel": n, "byte_offset": at}
    return {
        "format": "dstrain-checkpoint", "format_version": version, "dstrain_version": "0.1.0",
        "step": 20, "world_size": 1, "zero_stage": 3, "dtype": "fp32", "seed": 1234,
        "scalars": {"adam_step": 20.0, "loss_scale": 1.0, "good_steps": 0},
        "files": [f],
        "tensors": {"param": {"w": {"shape": [4, 8], "dtype": "fp32",
                                    "pieces": [piece(0, 16, 4096), piece(16, 16, 4160)]}},
                    "exp_avg": {"w": {"shape": [4, 8], "dtype": "bf16",
                                      "pieces": [piece(0, 32, 6144)]}}},
        "config": "[train]\nsteps = 20\n",
    }


def write_checkpoint_index_seeds():
    put("checkpoint_index_fuzz", "valid_v1", json.dumps(ckpt_index(1), indent=1))
    put("checkpoint_index_fuzz", "valid_v2", json.dumps(ckpt_index(2), indent=1))
    gap = ckpt_index(1)
    gap["tensors"]["param"]["w"]["pieces"][1]["offset"] = 17
    put("checkpoint_index_fuzz", "bad_pieces_gap", json.dumps(gap))
    outside = ckpt_index(1)
    outside["tensors"]["param"]["w"]["pieces"][1]["byte_offset"] = 8180
    put("checkpoint_index_fuzz", "bad_piece_outside_file", json.dumps(outside))
    put("checkpoint_index_fuzz", "bad_version", json.dumps(dict(ckpt_index(2), format_version=3)))


if __name__ == "__main__":
    write_safetensors_seeds()
    write_hf_index_seeds()
    write_token_file_seeds()
    write_checkpoint_index_seeds()
