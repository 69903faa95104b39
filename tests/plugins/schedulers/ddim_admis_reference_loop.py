#!/usr/bin/python3
"""Golden for the `ddim-admis` scheduler: ADMIS's sample_ddim loop, re-implemented here
independently of the C++ plugin, driven by an analytic stand-in for the UNet.

The real trajectory (fixture ddim_trajectory_io.safetensors, x0_ddim50/x0_ddim25) needs
the IDiff-Face UNet; this golden checks the sampler's step arithmetic alone. It follows
generative_model_training/diffusion/ddpm.py of zzzweakman/CVPR24_FRCSyn_ADMIS:
  - schedule: compute_beta_schedule('linear') in float32, alpha_bars as
    exp(cumsum(log(alphas))), alphas_prev = [1, alpha_bars[:-1]]
  - skip = T // ddim_step, timesteps reversed(range(0, T, skip))
  - previous alpha alphas_prev[t - skip] (1 when t - skip < 0): the reference's lookup
  - every scalar a 0-dim float32 tensor, as in the reference
  - with eta > 0, one torch.randn draw per step, added as std_dev_t * noise

The denoiser is eps(x, t) = 0.1 * tanh(x) + t / 1000 (float32), and x_T is
torch.randn(2, 3, 8, 8) after torch.manual_seed(0). The noise drawn for the eta > 0 run
is stored too, so the C++ test feeds the same noise regardless of random generators.

Regenerate (needs only torch; run from the repository root):
    /usr/bin/python3 tests/plugins/schedulers/ddim_admis_reference_loop.py \
        tests/golden/scheduler-ddim-admis-reference-loop.safetensors
"""
import json
import struct
import sys

import torch

T = 1000


def linear_schedule(T):
    scale = 1000 / T
    betas = torch.linspace(scale * 0.0001, scale * 0.02, T, dtype=torch.float32)
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
    alphas_prev = torch.cat((torch.tensor([1.0]).float(), alpha_bars[:-1]), 0)
    return betas, alpha_bars, alphas_prev


def analytic_eps(x, t):
    return 0.1 * torch.tanh(x) + t / 1000


def sample_ddim(x_T, ddim_step, eta, generator):
    betas, alpha_bars, alphas_prev = linear_schedule(T)
    skip = T // ddim_step
    x = x_T.clone()
    drawn = []
    visited = []
    for t in reversed(range(0, T, skip)):
        visited.append(t)
        eps = analytic_eps(x, t)
        a_t = alpha_bars[t]
        a_prev = alphas_prev[t - skip] if t - skip >= 0 else torch.tensor(1.0)
        b_t = 1 - a_t
        b_prev = 1 - a_prev
        x0 = (x - b_t ** 0.5 * eps) / a_t ** 0.5
        var = (b_prev / b_t) * (1 - a_t / a_prev)
        sd = eta * var ** 0.5
        eps = (x - a_t ** 0.5 * x0) / b_t ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev - sd ** 2) ** 0.5 * eps
        if eta > 0:
            z = torch.randn(x.shape, generator=generator)
            drawn.append(z)
            x = x + sd * z
    noise = torch.stack(drawn) if drawn else None
    return x, torch.tensor(visited, dtype=torch.int64), noise


def write_safetensors(tensors, path):
    codes = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"generator": "tests/plugins/schedulers/ddim_admis_reference_loop.py"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    torch.manual_seed(0)
    x_T = torch.randn(2, 3, 8, 8)
    out = {"x_T": x_T}
    for name, steps, eta in [("ddim50", 50, 0.0), ("ddim25", 25, 0.0), ("ddim30", 30, 0.0),
                             ("ddim25_eta0.5", 25, 0.5)]:
        generator = torch.Generator().manual_seed(1)
        x0, visited, noise = sample_ddim(x_T, steps, eta, generator)
        out[f"{name}.x0"] = x0
        out[f"{name}.timesteps"] = visited
        if noise is not None:
            out[f"{name}.noise"] = noise
    write_safetensors(out, sys.argv[1])


if __name__ == "__main__":
    main()
