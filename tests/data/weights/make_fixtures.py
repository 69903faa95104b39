#!/usr/bin/python3
"""Re-makes the weights I/O test fixtures with PyTorch 1.13 (run: /usr/bin/python3 make_fixtures.py).

Every checkpoint here is small (a few KB) and written by torch.save itself, so the C++
reader is tested against what PyTorch really writes. Expected values are written next to
them as safetensors files by `write_safetensors` below, a plain re-implementation of the
reference writer (the safetensors package is not installed here): tensors sorted by dtype
(the reference's enum order, descending) then by name, `__metadata__` first, the JSON
header padded with spaces to a multiple of 8 bytes.

`parity_sums.json` records, for each checkpoint in ../shared/parity, its tensor count and
float64 sums of chosen tensors as torch.load sees them, so the C++ test can check the
values it reads from those 48 MB files without storing a second copy.
"""

import argparse
import collections
import json
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# safetensors dtype codes and their rank in the reference implementation's Dtype enum
# (BOOL < U8 < I8 < ... < F32 < F64 < I64), by which its writer orders tensors.
SAFETENSORS_DTYPES = {
    torch.bool: ("BOOL", 0),
    torch.uint8: ("U8", 1),
    torch.int8: ("I8", 2),
    torch.int16: ("I16", 5),
    torch.float16: ("F16", 7),
    torch.bfloat16: ("BF16", 8),
    torch.int32: ("I32", 9),
    torch.float32: ("F32", 11),
    torch.float64: ("F64", 12),
    torch.int64: ("I64", 13),
}


def tensor_bytes(t):
    t = t.detach().contiguous()
    # numpy has no bfloat16: reinterpret its bits as int16 to get the raw bytes.
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(tensors, path, metadata=None):
    items = sorted(tensors.items(), key=lambda kv: (-SAFETENSORS_DTYPES[kv[1].dtype][1], kv[0]))
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    blobs = []
    for name, t in items:
        data = tensor_bytes(t)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def out(name):
    return os.path.join(HERE, name)


def dtype_tensors():
    """One tensor per dtype; the C++ test rebuilds the same values from these formulas."""
    return collections.OrderedDict(
        f32=(torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 2.0),
        f16=((torch.arange(6, dtype=torch.float32) - 3.0) * 0.25).to(torch.float16).reshape(2, 3),
        bf16=(torch.arange(5, dtype=torch.float32) * 0.125).to(torch.bfloat16),
        f64=torch.arange(4, dtype=torch.float64) / 3.0,
        i64=torch.tensor([-(2**40), -1, 0, 7, 2**62], dtype=torch.int64),
        i32=torch.tensor([-5, 123456], dtype=torch.int32),
        i16=torch.tensor([-300, 300], dtype=torch.int16),
        i8=torch.tensor([-128, 127], dtype=torch.int8),
        u8=torch.tensor([0, 255, 17], dtype=torch.uint8),
        flag=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5, dtype=torch.float32),
        empty=torch.zeros(0, 3, dtype=torch.float32),
    )


def make_dtypes():
    sd = dtype_tensors()
    torch.save(sd, out("dtypes.pt"))
    write_safetensors(sd, out("dtypes.safetensors"), {"format": "pt", "note": "made by make_fixtures.py"})
    # The same state dict pickled with protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL).
    torch.save(sd, out("dtypes_protocol4.pt"), pickle_protocol=4)


def make_cuda_location():
    """Storages tagged 'cuda:0', as checkpoints saved from a GPU are. torch.save asks
    torch.serialization.location_tag for each storage's location; answering 'cuda:0' writes
    exactly what a GPU run writes, without a GPU."""
    sd = collections.OrderedDict(
        weight=torch.arange(6, dtype=torch.float32).reshape(2, 3) - 1.5,
        bias=torch.tensor([0.5, -0.5], dtype=torch.float32),
    )
    real_tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(sd, out("cuda_location.pt"))
    finally:
        torch.serialization.location_tag = real_tag
    with zipfile.ZipFile(out("cuda_location.pt")) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    assert b"cuda:0" in pkl and b"cpu" not in pkl, "location tag was not written"
    back = torch.load(out("cuda_location.pt"), map_location="cpu")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def make_views():
    """Views sharing one storage: aliases, a transposed view, offsets, strided slices."""
    base = torch.arange(24, dtype=torch.float32)
    sd = collections.OrderedDict(
        base=base,
        alias=base,
        matrix=base.view(4, 6),
        transposed=base.view(4, 6).t(),
        offset_view=base[5:11],
        strided=base[2::5],
        offset_block=base[6:].view(3, 6)[:, 1:4],
    )
    torch.save(sd, out("views.pt"))
    back = torch.load(out("views.pt"))
    assert back["transposed"].stride() == (1, 6) and back["offset_view"].storage_offset() == 5
    assert back["base"].data_ptr() == back["alias"].data_ptr()
    write_safetensors({k: v.contiguous() for k, v in sd.items()}, out("views_expected.safetensors"))


class TinyNet(torch.nn.Module):
    """Mirrored in the C++ test: Linear(3, 2) then BatchNorm1d(2), inside a Sequential."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))

    def forward(self, x):
        return self.body(x)


def make_training_checkpoint():
    """A training checkpoint: the weights under 'state_dict' (keys with DataParallel's
    'module.' prefix) and the sort of other entries real checkpoints carry."""
    torch.manual_seed(0)
    net = TinyNet()
    net.body[1].running_mean.fill_(0.25)
    net.body[1].running_var.fill_(2.0)
    net.body[1].num_batches_tracked.fill_(7)
    net.eval()  # keep the running statistics set above
    model = torch.nn.DataParallel(net)  # keys module.body.0.weight, ...
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = model(torch.randn(4, 3)).sum()
    loss.backward()
    opt.step()
    state = model.state_dict()
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "state_dict": state,
        "optimizer": opt.state_dict(),
        "args": argparse.Namespace(lr=0.1, name="tiny", milestones=[22, 28]),
        "np_scalar": np.float64(1.5),
        "np_array": np.arange(3),
        "size": torch.Size([2, 3]),
        "huge": 2**70,
        "negative": -3,
        "ratio": 0.75,
        "text": "hello",
        "raw": b"\x00\xff",
        "nothing": None,
        "tags": {"a", "b"},
        "counter": collections.Counter({22: 1, 28: 1}),
    }
    torch.save(ckpt, out("training_checkpoint.ckpt"))
    write_safetensors(dict(state), out("training_checkpoint_expected.safetensors"))


def make_plain_dict():
    """A plain dict (not OrderedDict) with nested dicts of tensors and non-tensor leaves."""
    sd = {
        "a": torch.tensor([1.0, 2.0]),
        "b": {"c": torch.tensor([[3, 4]], dtype=torch.int64), "d": {"e": torch.tensor([5.5], dtype=torch.float64)}},
        "count": 5,
        "name": "plain",
        "listed": [torch.tensor([9.0])],
    }
    torch.save(sd, out("plain_dict.pt"))
    write_safetensors({"a": sd["a"], "b.c": sd["b"]["c"], "b.d.e": sd["b"]["d"]["e"]}, out("plain_dict_expected.safetensors"))


def make_parameters():
    """nn.Parameter values (torch._utils._rebuild_parameter), as dict(named_parameters())."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(2, 3)
    torch.save(dict(lin.named_parameters()), out("parameters.pt"))
    write_safetensors({k: v.detach() for k, v in lin.named_parameters()}, out("parameters_expected.safetensors"))


def make_legacy_and_broken():
    sd = collections.OrderedDict(w=torch.ones(2, 2))
    torch.save(sd, out("legacy.pt"), _use_new_zipfile_serialization=False)
    with open(out("legacy.pt"), "rb") as f:
        assert f.read(4) == b"\x80\x02\x8a\x0a"
    # A download cut short: the first 60% of a valid archive (no central directory).
    with open(out("dtypes.pt"), "rb") as f:
        data = f.read()
    with open(out("truncated.pt"), "wb") as f:
        f.write(data[: len(data) * 6 // 10])
    # A TorchScript archive is a zip with data.pkl too, but not a state dict.
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), out("torchscript.pt"))


def rewrite_archive(src, dst, top, patch_pickle=None):
    """Copies a torch.save archive record by record under another top folder (torch names
    it after the file; other writers use 'archive/'), optionally changing data.pkl."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            record = name.split("/", 1)[1]
            if record == "data.pkl" and patch_pickle:
                data = patch_pickle(data)
            zout.writestr(top + "/" + record, data)


def make_rewritten_archives():
    # The same checkpoint under the top folder 'archive/' (and written by Python's zipfile).
    rewrite_archive(out("dtypes.pt"), out("archive_folder.pt"), "archive")

    # A pickle that claims 7 elements for a storage record of 6 floats.
    sd = collections.OrderedDict(w=torch.arange(6, dtype=torch.float32))
    torch.save(sd, out("tmp_w.pt"))

    def claim_seven(data):
        # ('storage', FloatStorage, '0', 'cpu', 6): BININT1 6 then TUPLE ends the persistent id.
        assert data.count(b"K\x06t") == 1
        return data.replace(b"K\x06t", b"K\x07t")

    rewrite_archive(out("tmp_w.pt"), out("storage_size_mismatch.pt"), "storage_size_mismatch", claim_seven)
    # data.pkl cut short before its STOP opcode.
    rewrite_archive(out("tmp_w.pt"), out("truncated_pickle.pt"), "truncated_pickle", lambda data: data[: len(data) // 2])
    os.remove(out("tmp_w.pt"))
    assert torch.load(out("archive_folder.pt"))["f32"].shape == (3, 4)


def make_pickles():
    """Plain pickles of the value kinds the interpreter must handle, at protocols 2 to 5."""
    shared = [1, 2]
    obj = {
        "int1": 7,
        "int2": 300,
        "int4": -70000,
        "long": 2**40,
        "neg_long": -(2**40),
        "huge": 2**70,
        "float": -1.25,
        "text": "h\u00e9llo \u4e16\u754c",
        "raw": bytes(range(256)),
        "none": None,
        "yes": True,
        "no": False,
        "tuple0": (),
        "tuple1": (1,),
        "tuple2": (1, "a"),
        "tuple3": (1, 2, 3),
        "tuple5": (1, 2, 3, 4, 5),
        "list": [1, [2, 3], {"k": "v"}],
        "shared_a": shared,
        "shared_b": shared,
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
        "set": {3},
        "frozen": frozenset([4]),
        "namespace": argparse.Namespace(lr=0.5),
        "int_keys": {1: "one", 2: "two"},
        "long_text": "x" * 300,
        "long_raw": b"y" * 300,
    }
    for protocol in (2, 3, 4, 5):
        with open(out("values_p%d.pkl" % protocol), "wb") as f:
            pickle.dump(obj, f, protocol=protocol)


def make_parity_sums():
    parity = os.environ.get("ADMIS_PARITY_DIR", os.path.join(HERE, "..", "..", "..", "..", "shared", "parity"))
    parity = os.path.abspath(parity)
    sums = {}
    for name in sorted(os.listdir(parity)):
        if not name.endswith((".pt", ".ckpt")):
            continue
        sd = torch.load(os.path.join(parity, name), map_location="cpu")
        keys = list(sd.keys())
        chosen = keys[:3] + keys[len(keys) // 2 : len(keys) // 2 + 1] + keys[-2:]
        sums[name] = {
            "count": len(keys),
            "total_sum": float(sum(v.double().sum().item() for v in sd.values())),
            "total_values": int(sum(v.numel() for v in sd.values())),
            "tensors": {
                k: {
                    "dtype": str(sd[k].dtype).replace("torch.", ""),
                    "shape": list(sd[k].shape),
                    "sum": float(sd[k].double().sum().item()),
                    "abs_sum": float(sd[k].double().abs().sum().item()),
                }
                for k in chosen
            },
        }
    with open(out("parity_sums.json"), "w") as f:
        json.dump(sums, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    make_dtypes()
    make_cuda_location()
    make_views()
    make_training_checkpoint()
    make_plain_dict()
    make_parameters()
    make_legacy_and_broken()
    make_rewritten_archives()
    make_pickles()
    make_parity_sums()
    print("fixtures written to", HERE, file=sys.stderr)


if __name__ == "__main__":
    main()
