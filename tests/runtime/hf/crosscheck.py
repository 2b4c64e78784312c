"""Cross-checks dstrain's safetensors code against Hugging Face's `safetensors` package.

  crosscheck.py write DIR   writes files with many dtypes (numpy and torch writers), the raw bytes
                            of every tensor and a manifest, for the C++ reader to compare against;
                            also fp32 values with NumPy's fp16 and PyTorch's bf16 roundings.
  crosscheck.py check DIR   loads every file listed in DIR/cpp_manifest.json (written by the C++
                            writer) with safetensors (torch, and numpy where its dtypes allow)
                            and compares dtypes, shapes, metadata and the raw bytes the C++ side
                            dumped under DIR/cpp_raw/; exits 1 on any difference.
"""
import json
import os
import sys

import numpy as np
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
TORCH_DTYPES = {
    "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TORCH_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def raw_bytes(value):
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).tobytes()
    bits = TORCH_BITS[value.element_size()]
    return value.contiguous().view(bits).numpy().tobytes()


def numpy_tensors(rng):
    out = {}
    shapes = [(3, 5), (7,), (), (2, 3, 2), (0, 4)]
    for i, (dtype_name, dtype) in enumerate(NUMPY_DTYPES.items()):
        shape = shapes[i % len(shapes)]
        if dtype == np.bool_:
            value = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        else:
            value = (rng.standard_normal(size=shape) * 100).astype(dtype)
        out[f"np.{dtype_name.lower()}.weight"] = np.asarray(value, dtype=dtype)
    out["model.layers.0.self_attn.q_proj.weight"] = rng.standard_normal((8, 8)).astype(np.float32)
    return out


def torch_tensors(gen):
    out = {}
    for dtype_name, dtype in TORCH_DTYPES.items():
        out[f"pt.{dtype_name.lower()}"] = (torch.randn(4, 6, generator=gen) * 10).to(dtype)
    out["pt.f32"] = torch.randn(5, generator=gen)
    out["pt.empty_bf16"] = torch.zeros(0, 3, dtype=torch.bfloat16)
    return out


def dump(dir_, file_name, tensors, manifest, dtype_of):
    raw_dir = os.path.join(dir_, "raw", file_name)
    os.makedirs(raw_dir, exist_ok=True)
    entries = {}
    for name, value in tensors.items():
        with open(os.path.join(raw_dir, name + ".bin"), "wb") as f:
            f.write(raw_bytes(value))
        entries[name] = {"dtype": dtype_of(value), "shape": list(value.shape)}
    manifest[file_name] = entries


def conversion_inputs(rng):
    specials = np.array(
        [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 65536.0, 1e-8, 2.0 ** -24, 2.0 ** -25,
         1.5 * 2.0 ** -25, 2.0 ** -14, 3.4e38, -3.4e38, np.inf, -np.inf, 1.0 + 2.0 ** -8,
         1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1e-40], dtype=np.float32)
    random_bits = rng.integers(0, 2 ** 32, size=20000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([specials, random_bits.view(np.float32)])
    values = values[~np.isnan(values)]  # NaN payloads differ by library; tested in C++
    # Midpoints between neighbouring fp16 / bf16 values exercise ties-to-even.
    halves = np.arange(0, 0x7bff, 37, dtype=np.uint16).view(np.float16).astype(np.float32)
    half_next = (np.arange(0, 0x7bff, 37, dtype=np.uint16) + 1).view(np.float16).astype(np.float32)
    bf_bits = np.arange(0, 0x7f7f, 41, dtype=np.uint32)
    bf_mid = ((bf_bits << 16) + 0x8000).astype(np.uint32).view(np.float32)
    values = np.concatenate([values, (halves + half_next) / 2, bf_mid, -bf_mid]).astype(np.float32)
    return values


def write(dir_):
    rng = np.random.default_rng(1234)
    gen = torch.Generator().manual_seed(1234)
    manifest = {}
    np_tensors = numpy_tensors(rng)
    safetensors.numpy.save_file(np_tensors, os.path.join(dir_, "numpy.safetensors"),
                                metadata={"format": "np", "source": "crosscheck"})
    dump(dir_, "numpy.safetensors", np_tensors, manifest,
         lambda v: {np.dtype(t): k for k, t in NUMPY_DTYPES.items()}[v.dtype])
    pt_tensors = torch_tensors(gen)
    safetensors.torch.save_file(pt_tensors, os.path.join(dir_, "torch.safetensors"),
                                metadata={"format": "pt"})
    dtype_names = {v: k for k, v in TORCH_DTYPES.items()}
    dtype_names[torch.float32] = "F32"
    dump(dir_, "torch.safetensors", pt_tensors, manifest, lambda v: dtype_names[v.dtype])
    with open(os.path.join(dir_, "manifest.json"), "w") as f:
        json.dump(manifest, f)

    values = conversion_inputs(rng)
    t = torch.from_numpy(values)
    with np.errstate(over="ignore"):  # overflow to infinity is part of what is checked
        f16 = values.astype(np.float16)
    conv = {
        "f32": values,
        "f16_bits": f16.view(np.int16),
        "bf16_bits": t.to(torch.bfloat16).view(torch.int16).numpy(),
        "f16_back": f16.astype(np.float32),
        "bf16_back": t.to(torch.bfloat16).to(torch.float32).numpy(),
    }
    safetensors.numpy.save_file(conv, os.path.join(dir_, "convert.safetensors"))


def check_file(dir_, file_name, manifest, errors):
    path = os.path.join(dir_, file_name)
    with safetensors.safe_open(path, framework="pt") as f:
        if f.metadata() != manifest["__metadata__"]:
            errors.append(f"{file_name}: metadata {f.metadata()} != {manifest['__metadata__']}")
        if sorted(f.keys()) != sorted(manifest["tensors"]):
            errors.append(f"{file_name}: names {sorted(f.keys())} != {sorted(manifest['tensors'])}")
        loaded = {k: f.get_tensor(k) for k in f.keys()}
    numpy_loaded = safetensors.numpy.load_file(path) if all(
        e["dtype"] in NUMPY_DTYPES for e in manifest["tensors"].values()) else None
    torch_names = {v: k for k, v in TORCH_DTYPES.items()}
    torch_names.update({torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                        torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"})
    for name, entry in manifest["tensors"].items():
        if name not in loaded:
            continue
        value = loaded[name]
        with open(os.path.join(dir_, "cpp_raw", file_name, name + ".bin"), "rb") as f:
            expected = f.read()
        if torch_names[value.dtype] != entry["dtype"]:
            errors.append(f"{file_name}: {name}: dtype {value.dtype} != {entry['dtype']}")
        if list(value.shape) != entry["shape"]:
            errors.append(f"{file_name}: {name}: shape {list(value.shape)} != {entry['shape']}")
        got = raw_bytes(value) if value.dtype in TORCH_DTYPES.values() else value.numpy().tobytes()
        if got != expected:
            errors.append(f"{file_name}: {name}: bytes differ")
        if numpy_loaded is not None:
            if numpy_loaded[name].tobytes() != expected:
                errors.append(f"{file_name}: {name}: bytes differ through safetensors.numpy")
            if list(numpy_loaded[name].shape) != entry["shape"]:
                errors.append(f"{file_name}: {name}: numpy shape differs")
    print(f"crosscheck: checked {len(manifest['tensors'])} tensors of {path}"
          f"{' (torch and numpy)' if numpy_loaded is not None else ' (torch)'}")


def check(dir_):
    with open(os.path.join(dir_, "cpp_manifest.json")) as f:
        manifest = json.load(f)
    errors = []
    for file_name, entry in manifest.items():
        check_file(dir_, file_name, entry, errors)
    for e in errors:
        print("crosscheck:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "write":
        write(sys.argv[2])
        sys.exit(0)
    sys.exit(check(sys.argv[2]))
