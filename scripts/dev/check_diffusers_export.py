#!/usr/bin/env python3
"""Dev-only check (CI does not run it): `hv-ckpt export --naming diffusers` loads into diffusers.

For each DiT parity fixture (Tests/HVModelTests/Fixtures/dit_parity_{a,b}.h5, official weights):
  1. `hv-ckpt export FIXTURE --format safetensors --naming diffusers --out TMP.safetensors`
  2. diffusers' HunyuanVideoTransformer3DModel(**config).load_state_dict(file, strict=True)
     (no missing or unexpected keys, every shape right);
  3. the model's velocity on the fixture's inputs equals the fixture's stored diffusers velocity;
  4. the header follows the format: 8-byte LE length, JSON, spaces padding to 8, contiguous offsets.
Also checks that `--naming official` writes exactly the fixture's official names and values, and
that a real sharded checkpoint (2 steps of configs/runs/tiny.yaml on 2 local workers, ZeRO 3)
exports to a file that diffusers loads strictly with the config taken from its metadata.

    swift build -c release                                   # builds .build/release/hv-ckpt
    /work/venv/bin/python scripts/dev/check_diffusers_export.py
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
from diffusers import HunyuanVideoTransformer3DModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_dit_fixtures import CONFIGS, OUT_DIR, REPO, run_diffusers  # noqa: E402

HV_CKPT = os.environ.get("HV_CKPT", os.path.join(REPO, ".build", "release", "hv-ckpt"))
HV_COORD = os.path.join(os.path.dirname(HV_CKPT), "hv-coord")


def diffusers_kwargs(c):
    """hv's DiTConfig JSON (official argument names) -> HunyuanVideoTransformer3DModel kwargs."""
    assert c["qk_norm"], "diffusers' HunyuanVideo always has q/k RMSNorm"
    return dict(in_channels=c["in_channels"], out_channels=c["out_channels"], num_attention_heads=c["heads_num"],
                attention_head_dim=c["hidden_size"] // c["heads_num"], num_layers=c["mm_double_blocks_depth"],
                num_single_layers=c["mm_single_blocks_depth"], num_refiner_layers=c["refiner_depth"],
                mlp_ratio=c["mlp_width_ratio"], patch_size=c["patch_size"][1], patch_size_t=c["patch_size"][0],
                qk_norm="rms_norm", guidance_embeds=c["guidance_embed"], text_embed_dim=c["text_states_dim"],
                pooled_projection_dim=c["text_states_dim_2"], rope_theta=c["rope_theta"], rope_axes_dim=tuple(c["rope_dim_list"]))


def check_header(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0, "data not 8-byte aligned"
    header = raw[8:8 + n]
    assert header.rstrip(b" ").endswith(b"}") and header.startswith(b"{"), "header padding must be spaces"
    h = json.loads(header)
    spans = sorted(tuple(v["data_offsets"]) for k, v in h.items() if k != "__metadata__")
    pos = 0
    for a, b in spans:
        assert a == pos, f"gap/overlap at {a}"
        pos = b
    assert 8 + n + pos == len(raw), "trailing or missing bytes"
    assert all(v["dtype"] == "F32" for k, v in h.items() if k != "__metadata__")
    return h


def main():
    torch.set_num_threads(1)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in CONFIGS.items():
            fixture = os.path.join(OUT_DIR, f"dit_parity_{name}.h5")
            out = os.path.join(tmp, f"{name}.safetensors")
            subprocess.run([HV_CKPT, "export", fixture, "--format", "safetensors", "--naming", "diffusers", "--out", out], check=True)
            check_header(out)
            model = HunyuanVideoTransformer3DModel(**spec["diffusers"]).eval()
            result = model.load_state_dict(load_file(out), strict=True)
            assert not result.missing_keys and not result.unexpected_keys, result
            with h5py.File(fixture, "r") as f:
                inp = {k: f["inputs"][k][()] for k in f["inputs"]}
                v_ref = f["outputs"]["v"][()]
                official = {k: f["weights"][k][()] for k in f["weights"]}
            v = run_diffusers(model, inp, torch.float32)
            d = float(np.abs(v - v_ref).max())
            print(f"[{name}] diffusers load_state_dict(strict=True) OK ({len(model.state_dict())} tensors); "
                  f"max|v - fixture v| = {d:.2e}")
            ok &= d <= 1e-5

            out2 = os.path.join(tmp, f"{name}-official.safetensors")
            subprocess.run([HV_CKPT, "export", fixture, "--naming", "official", "--out", out2], check=True)
            check_header(out2)
            back = load_file(out2)
            same = set(back) == set(official) and all(np.array_equal(back[k].numpy(), official[k]) for k in official)
            print(f"[{name}] --naming official: {'identical' if same else 'DIFFERENT'} names and values")
            ok &= same

        # A real sharded checkpoint.
        hosts, run = os.path.join(tmp, "hosts"), os.path.join(tmp, "run")
        with open(hosts, "w") as f:
            f.write("localhost slots=2\n")
        subprocess.run([HV_COORD, "launch", "--nodes", hosts, "--config", os.path.join(REPO, "configs/runs/tiny.yaml"),
                        "--steps", "2", "--zero", "3", "--run-dir", run, "--quiet"], check=True, cwd=REPO)
        out = os.path.join(tmp, "tiny.safetensors")
        subprocess.run([HV_CKPT, "export", run, "--naming", "diffusers", "--out", out], check=True)
        h = check_header(out)
        model = HunyuanVideoTransformer3DModel(**diffusers_kwargs(json.loads(h["__metadata__"]["model_config"])))
        result = model.load_state_dict(load_file(out), strict=True)
        assert not result.missing_keys and not result.unexpected_keys, result
        print(f"[tiny checkpoint, 2 workers ZeRO 3] diffusers load_state_dict(strict=True) OK ({len(model.state_dict())} tensors)")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
