"""PyTorch side of `hv-bench step` and `hv-bench sample`: the same training step (--mode train) or
sampling step (--mode sample: one no-grad forward + the Euler update) on diffusers'
HunyuanVideoTransformer3DModel.

Run by hv-bench with the venv's python (`--torch /path/to/venv`); prints one JSON line:
{"step_seconds": ..., "torch": "...", "diffusers": "...", "threads": N, "params": N}.
With --serve it instead prints that line (without step_seconds) after two warm-up steps, then
runs one timed step per "step" line read from stdin and prints {"seconds": ...} for each, until
"quit" or end of input: hv-bench alternates these steps with its own, so that both sides are
measured under the same host conditions.
A dev/benchmark tool: hv itself never needs Python.
"""
import argparse, json, time

import torch
import diffusers
from diffusers import HunyuanVideoTransformer3DModel

p = argparse.ArgumentParser()
p.add_argument("--hidden", type=int, required=True)
p.add_argument("--heads", type=int, required=True)
p.add_argument("--double", type=int, required=True)
p.add_argument("--single", type=int, required=True)
p.add_argument("--refiner", type=int, required=True)
p.add_argument("--rope", type=str, required=True)        # "16,24,24"
p.add_argument("--text-dim", type=int, required=True)
p.add_argument("--pooled-dim", type=int, required=True)
p.add_argument("--latent", type=str, required=True)      # "4x32x32"
p.add_argument("--text-tokens", type=int, required=True)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--mode", choices=["train", "sample"], default="train")
# bf16 mixed precision as PyTorch users run it on CPU: fp32 weights and optimizer, the model's
# forward under torch.autocast (matmuls and convolutions in bf16), backward through it.
p.add_argument("--bf16", action="store_true")
p.add_argument("--serve", action="store_true")
a = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(a.threads)
T, H, W = (int(v) for v in a.latent.split("x"))
model = HunyuanVideoTransformer3DModel(
    in_channels=16, out_channels=16, num_attention_heads=a.heads, attention_head_dim=a.hidden // a.heads,
    num_layers=a.double, num_single_layers=a.single, num_refiner_layers=a.refiner, mlp_ratio=4.0,
    patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=False, text_embed_dim=a.text_dim,
    pooled_projection_dim=a.pooled_dim, rope_theta=256.0, rope_axes_dim=tuple(int(v) for v in a.rope.split(",")),
).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
B, L = a.batch, a.text_tokens
x = torch.randn(B, 16, T, H, W)
target = torch.randn(B, 16, T, H, W)
text = torch.randn(B, L, a.text_dim)
mask = torch.ones(B, L, dtype=torch.bool)
pooled = torch.randn(B, a.pooled_dim)
t = torch.full((B,), 500.0)

import contextlib
def precision():
    return torch.autocast("cpu", dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()

def sample_step():
    global x
    with torch.no_grad(), precision():
        v = model(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask,
                  pooled_projections=pooled, return_dict=False)[0]
        x = x - 0.02 * v.float()

def train_step():
    opt.zero_grad(set_to_none=True)
    with precision():
        v = model(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask,
                  pooled_projections=pooled, return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(v.float(), target)
    loss.backward()
    opt.step()

if a.mode == "sample":
    model.eval()
    step = sample_step
else:
    step = train_step
step()
info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": a.threads, "bf16": a.bf16,
        "params": sum(p.numel() for p in model.parameters())}
if a.serve:
    import sys
    step()  # a second warm-up step, as hv-bench gives its own side
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        step()
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    sys.exit(0)
best = float("inf")
for _ in range(a.repeats):
    t0 = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"step_seconds": best, **info}))
