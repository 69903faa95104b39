#!/usr/bin/python3
"""Writes configs/examples/head_inputs.safetensors: 8 embeddings of width 64 drawn around
4 identity centres, and their labels; the example manifests run heads on it."""
import json, struct, sys
import numpy as np

rng = np.random.default_rng(0)
centres = rng.standard_normal((4, 64)).astype(np.float32)
labels = np.repeat(np.arange(4), 2).astype(np.int64)
embeddings = (centres[labels] + 0.3 * rng.standard_normal((8, 64))).astype(np.float32)

tensors = {"embeddings": ("F32", embeddings), "labels": ("I64", labels)}
header, blobs, offset = {}, [], 0
for name, (dtype, array) in tensors.items():
    data = array.tobytes()
    header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
out = sys.argv[1] if len(sys.argv) > 1 else "configs/examples/head_inputs.safetensors"
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
