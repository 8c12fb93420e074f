#!/usr/bin/env python3
"""Golden fixtures for the DiT forward-parity test (dev tool; CI does not run it).

What it makes
    Tests/HVModelTests/Fixtures/dit_parity_a.h5 and dit_parity_b.h5: two tiny random
    HunyuanVideo DiTs evaluated by an INDEPENDENT implementation, diffusers'
    `HunyuanVideoTransformer3DModel` (float32, eval mode), with every parameter re-drawn at
    random (diffusers zero-initialises the adaLN / output layers, which would hide bugs).

    config A: 4 -> 4 channels, 2 heads x 16 (hidden 32), 1 double / 1 single / 1 refiner block,
              no guidance embedder, text dims 12 / 8, RoPE (4, 6, 6); x [2, 4, 3, 4, 6], L = 5.
    config B: 16 -> 16 channels, 3 heads x 16 (hidden 48), 2 / 2 / 2 blocks, guidance embedder,
              text dims 20 / 10, RoPE (4, 6, 6); x [2, 16, 3, 6, 4], L = 7.
    Both: batch 2, sample 0 has all text tokens real, sample 1 is padded at the end.

File layout (one file per config)
    attribute `config`   JSON with the Swift `DiTConfig` field names.
    group `weights`      one float32 dataset per OFFICIAL Tencent parameter name (e.g.
                         `double_blocks.0.img_attn_qkv.weight`), official shapes; exactly the
                         parameters `HunyuanDiT(config:)` allocates. Weights are drawn from
                         N(0, 0.15^2) (norm scales from 1 + N(0, 0.15^2)) and rounded to
                         multiples of 1/64 so that deflate keeps the files small; the datasets
                         larger than 1024 elements are chunked + deflate-compressed.
    group `inputs`       x [B,C,T,H,W], t [B] (sigma x 1000), text_states [B,L,D],
                         text_mask [B,L] (0/1 float), text_states_2 [B,D2], guidance [B]
                         (config B only; scale x 1000). All float32.
    group `outputs`      v [B,C,T,H,W] float32: diffusers' velocity.

Self-check
    The diffusers state dict is converted to the official names (the inverse of diffusers'
    scripts/convert_hunyuan_video_to_diffusers.py) and fed to an independent float64 numpy
    re-implementation of the OFFICIAL forward (Tencent hyvideo/modules: flash-attn varlen
    segments for the joint attention, refiner mask with key 0 forced on). The script asserts
    it matches diffusers (float64 and float32 runs) on the video velocity, that padded text
    cannot leak into the video, and that the name/shape set equals the Swift model's.

Tolerance note for the Swift test
    The official code and diffusers build the 256-d timestep/guidance sinusoid from float32
    frequencies and float32 t * freq products; at t = 730 and guidance = 6000 that rounding moves
    v by ~3e-5 (A) and ~5e-4 (B) against exact arithmetic (printed as "exact-float64 vs float32
    timestep sinusoid"). A Swift model that computes the sinusoid in Double needs about that much
    slack on top of float32 noise (~1e-5).

How to run (the venv lives outside the repo)
    python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers h5py numpy
    /work/venv/bin/python scripts/dev/make_dit_fixtures.py            # from the repo root
    /work/venv/bin/python scripts/dev/make_dit_fixtures.py --check    # self-check only, no files
"""

import argparse
import json
import math
import os
import sys

import h5py
import numpy as np
import torch
from diffusers import HunyuanVideoTransformer3DModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(REPO, "Tests", "HVModelTests", "Fixtures")

CONFIGS = {
    "a": dict(
        seed=1234,
        diffusers=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                       num_single_layers=1, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                       qk_norm="rms_norm", guidance_embeds=False, text_embed_dim=12, pooled_projection_dim=8,
                       rope_theta=256.0, rope_axes_dim=(4, 6, 6)),
        B=2, T=3, H=4, W=6, L=5, real_tokens=[5, 3], t=[250.0, 730.0], guidance=None,
    ),
    "b": dict(
        seed=5678,
        diffusers=dict(in_channels=16, out_channels=16, num_attention_heads=3, attention_head_dim=16, num_layers=2,
                       num_single_layers=2, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                       qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=20, pooled_projection_dim=10,
                       rope_theta=256.0, rope_axes_dim=(4, 6, 6)),
        B=2, T=3, H=6, W=4, L=7, real_tokens=[7, 4], t=[250.0, 730.0], guidance=[6000.0, 3500.0],
    ),
}

WEIGHT_STD = 0.15
QUANT = 64.0  # weights are multiples of 1/QUANT


def swift_config(d):
    """The Swift DiTConfig (official HYVideoDiffusionTransformer argument names)."""
    return dict(
        in_channels=d["in_channels"], out_channels=d["out_channels"],
        patch_size=[d["patch_size_t"], d["patch_size"], d["patch_size"]],
        hidden_size=d["num_attention_heads"] * d["attention_head_dim"], heads_num=d["num_attention_heads"],
        mlp_width_ratio=float(d["mlp_ratio"]), mm_double_blocks_depth=d["num_layers"],
        mm_single_blocks_depth=d["num_single_layers"], rope_dim_list=list(d["rope_axes_dim"]),
        rope_theta=float(d["rope_theta"]), text_states_dim=d["text_embed_dim"],
        text_states_dim_2=d["pooled_projection_dim"], guidance_embed=bool(d["guidance_embeds"]),
        refiner_depth=d["num_refiner_layers"], qk_norm=True,
    )


# ----------------------------------------------------------------------------------------------
# Name sets
# ----------------------------------------------------------------------------------------------

def swift_parameter_shapes(c):
    """Every parameter `HunyuanDiT(config:)` allocates (Sources/HVModel/DiT/*.swift), by path."""
    H, D, M = c["hidden_size"], c["hidden_size"] // c["heads_num"], int(c["hidden_size"] * c["mlp_width_ratio"])
    pt, ph, pw = c["patch_size"]
    P, Dt, D2, F = pt * ph * pw, c["text_states_dim"], c["text_states_dim_2"], 256
    s = {}

    def lin(name, i, o):
        s[name + ".weight"] = (o, i)
        s[name + ".bias"] = (o,)

    s["img_in.proj.weight"] = (H, c["in_channels"], pt, ph, pw)
    s["img_in.proj.bias"] = (H,)
    lin("txt_in.input_embedder", Dt, H)
    lin("txt_in.t_embedder.mlp.0", F, H)
    lin("txt_in.t_embedder.mlp.2", H, H)
    lin("txt_in.c_embedder.linear_1", Dt, H)
    lin("txt_in.c_embedder.linear_2", H, H)
    for n in range(c["refiner_depth"]):
        p = f"txt_in.individual_token_refiner.blocks.{n}."
        for norm in ("norm1", "norm2"):
            s[p + norm + ".weight"] = (H,)
            s[p + norm + ".bias"] = (H,)
        lin(p + "self_attn_qkv", H, 3 * H)
        lin(p + "self_attn_proj", H, H)
        lin(p + "mlp.fc1", H, 4 * H)  # the refiner's MLP ratio is fixed at 4
        lin(p + "mlp.fc2", 4 * H, H)
        lin(p + "adaLN_modulation.1", H, 2 * H)
    lin("time_in.mlp.0", F, H)
    lin("time_in.mlp.2", H, H)
    lin("vector_in.in_layer", D2, H)
    lin("vector_in.out_layer", H, H)
    if c["guidance_embed"]:
        lin("guidance_in.mlp.0", F, H)
        lin("guidance_in.mlp.2", H, H)
    for n in range(c["mm_double_blocks_depth"]):
        for st in ("img", "txt"):
            p = f"double_blocks.{n}.{st}_"
            lin(p + "mod.linear", H, 6 * H)
            lin(p + "attn_qkv", H, 3 * H)
            if c["qk_norm"]:
                s[p + "attn_q_norm.weight"] = (D,)
                s[p + "attn_k_norm.weight"] = (D,)
            lin(p + "attn_proj", H, H)
            lin(p + "mlp.fc1", H, M)
            lin(p + "mlp.fc2", M, H)
    for n in range(c["mm_single_blocks_depth"]):
        p = f"single_blocks.{n}."
        lin(p + "linear1", H, 3 * H + M)
        lin(p + "linear2", H + M, H)
        if c["qk_norm"]:
            s[p + "q_norm.weight"] = (D,)
            s[p + "k_norm.weight"] = (D,)
        lin(p + "modulation.linear", H, 3 * H)
    lin("final_layer.linear", H, P * c["out_channels"])
    lin("final_layer.adaLN_modulation.1", H, 2 * H)
    return s


def swift_parameter_count(c):
    """DiTConfig.parameterCount (Sources/HVModel/DiT/DiTConfig+Counts.swift), transcribed."""
    H, M, F = c["hidden_size"], int(c["hidden_size"] * c["mlp_width_ratio"]), 256
    P = int(np.prod(c["patch_size"]))
    D = H // c["heads_num"]

    def linear(i, o):
        return i * o + o

    embedder = linear(F, H) + linear(H, H)
    refiner = 2 * H + linear(H, 3 * H) + linear(H, H) + 2 * H + linear(H, 4 * H) + linear(4 * H, H) + linear(H, 2 * H)
    txt_in = linear(c["text_states_dim"], H) + embedder + linear(c["text_states_dim"], H) + linear(H, H) \
        + c["refiner_depth"] * refiner
    qk = 2 * D if c["qk_norm"] else 0
    stream = linear(H, 6 * H) + linear(H, 3 * H) + qk + linear(H, H) + linear(H, M) + linear(M, H)
    single = linear(H, 3 * H + M) + linear(H + M, H) + qk + linear(H, 3 * H)
    final = linear(H, P * c["out_channels"]) + linear(H, 2 * H)
    return (c["in_channels"] * P * H + H + txt_in + embedder + linear(c["text_states_dim_2"], H) + linear(H, H)
            + (embedder if c["guidance_embed"] else 0) + c["mm_double_blocks_depth"] * 2 * stream
            + c["mm_single_blocks_depth"] * single + final)


# ----------------------------------------------------------------------------------------------
# diffusers -> official state dict
# ----------------------------------------------------------------------------------------------

def diffusers_to_official(sd, c):
    """Inverse of diffusers' convert_hunyuan_video_to_diffusers.py. Every diffusers tensor is
    used exactly once; returns {official name: float32 numpy array}."""
    sd = {k: v.detach().cpu().float().numpy() for k, v in sd.items()}
    used = set()
    out = {}

    def take(k):
        if k in used:
            raise KeyError(f"{k} used twice")
        used.add(k)
        return sd[k]

    def lin(dst, src):  # same tensor, new name
        out[dst + ".weight"] = take(src + ".weight")
        out[dst + ".bias"] = take(src + ".bias")

    def fuse(dst, srcs):  # concatenate along the output axis, in the given order
        out[dst + ".weight"] = np.concatenate([take(s + ".weight") for s in srcs], axis=0)
        out[dst + ".bias"] = np.concatenate([take(s + ".bias") for s in srcs], axis=0)

    def copy(dst, src):
        out[dst] = take(src)

    lin("img_in.proj", "x_embedder.proj")
    # Token refiner (official txt_in = SingleTokenRefiner).
    ce = "context_embedder."
    lin("txt_in.input_embedder", ce + "proj_in")
    lin("txt_in.t_embedder.mlp.0", ce + "time_text_embed.timestep_embedder.linear_1")
    lin("txt_in.t_embedder.mlp.2", ce + "time_text_embed.timestep_embedder.linear_2")
    lin("txt_in.c_embedder.linear_1", ce + "time_text_embed.text_embedder.linear_1")
    lin("txt_in.c_embedder.linear_2", ce + "time_text_embed.text_embedder.linear_2")
    for n in range(c["refiner_depth"]):
        s, d = f"{ce}token_refiner.refiner_blocks.{n}.", f"txt_in.individual_token_refiner.blocks.{n}."
        lin(d + "norm1", s + "norm1")
        fuse(d + "self_attn_qkv", [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v"])
        lin(d + "self_attn_proj", s + "attn.to_out.0")
        lin(d + "norm2", s + "norm2")
        lin(d + "mlp.fc1", s + "ff.net.0.proj")
        lin(d + "mlp.fc2", s + "ff.net.2")
        lin(d + "adaLN_modulation.1", s + "norm_out.linear")  # (gate_msa, gate_mlp) in both
    # Conditioning vector.
    lin("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    lin("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if c["guidance_embed"]:
        lin("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1")
        lin("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2")
    # Dual-stream blocks. AdaLayerNormZero chunks (shift_msa, scale_msa, gate_msa, shift_mlp,
    # scale_mlp, gate_mlp) == official (shift1, scale1, gate1, shift2, scale2, gate2): no permutation.
    for n in range(c["mm_double_blocks_depth"]):
        s, d = f"transformer_blocks.{n}.", f"double_blocks.{n}."
        lin(d + "img_mod.linear", s + "norm1.linear")
        fuse(d + "img_attn_qkv", [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v"])
        copy(d + "img_attn_q_norm.weight", s + "attn.norm_q.weight")
        copy(d + "img_attn_k_norm.weight", s + "attn.norm_k.weight")
        lin(d + "img_attn_proj", s + "attn.to_out.0")
        lin(d + "img_mlp.fc1", s + "ff.net.0.proj")
        lin(d + "img_mlp.fc2", s + "ff.net.2")
        lin(d + "txt_mod.linear", s + "norm1_context.linear")
        fuse(d + "txt_attn_qkv", [s + "attn.add_q_proj", s + "attn.add_k_proj", s + "attn.add_v_proj"])
        copy(d + "txt_attn_q_norm.weight", s + "attn.norm_added_q.weight")
        copy(d + "txt_attn_k_norm.weight", s + "attn.norm_added_k.weight")
        lin(d + "txt_attn_proj", s + "attn.to_add_out")
        lin(d + "txt_mlp.fc1", s + "ff_context.net.0.proj")
        lin(d + "txt_mlp.fc2", s + "ff_context.net.2")
    # Single-stream blocks: linear1 = [q; k; v; mlp_in], linear2 = proj_out.
    # AdaLayerNormZeroSingle chunks (shift, scale, gate) == official: no permutation.
    for n in range(c["mm_single_blocks_depth"]):
        s, d = f"single_transformer_blocks.{n}.", f"single_blocks.{n}."
        fuse(d + "linear1", [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"])
        lin(d + "linear2", s + "proj_out")
        copy(d + "q_norm.weight", s + "attn.norm_q.weight")
        copy(d + "k_norm.weight", s + "attn.norm_k.weight")
        lin(d + "modulation.linear", s + "norm.linear")
    # Final layer: diffusers' AdaLayerNormContinuous chunks (scale, shift); official (shift, scale).
    for suffix in ("weight", "bias"):
        scale, shift = np.split(take("norm_out.linear." + suffix), 2, axis=0)
        out["final_layer.adaLN_modulation.1." + suffix] = np.concatenate([shift, scale], axis=0)
    lin("final_layer.linear", "proj_out")

    unused = sorted(set(sd) - used)
    if unused:
        raise KeyError(f"diffusers parameters not converted: {unused}")
    return out


# ----------------------------------------------------------------------------------------------
# Independent float64 re-implementation of the OFFICIAL forward (Tencent hyvideo/modules)
# ----------------------------------------------------------------------------------------------

def official_forward(w, c, inp, mask_mode="official", sinusoid_f32=True):
    """mask_mode "official": flash-attn varlen segments ([img + real txt] | [padded txt]) in the
    DiT blocks, refiner mask (q real & k real) with key 0 forced on (hyvideo token_refiner.py).
    mask_mode "keymask": padded text masked as keys only everywhere (what Swift and, in the
    DiT blocks, diffusers do). Both must give the same video velocity.
    sinusoid_f32: build the timestep features from float32 frequencies and float32 arguments
    t * freq, as the official `timestep_embedding` (and diffusers' `Timesteps`) do even in a
    float64 model; False uses exact float64 arguments (what Swift's `timestepEmbedding` does)."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    Hd, heads = c["hidden_size"], c["heads_num"]
    Dh, M = Hd // heads, int(Hd * c["mlp_width_ratio"])
    pt, ph, pw = c["patch_size"]
    x = inp["x"].astype(np.float64)
    t = inp["t"].astype(np.float64)
    text = inp["text_states"].astype(np.float64)
    mask = inp["text_mask"] > 0.5
    B, C, T, Hh, Ww = x.shape
    L = text.shape[1]
    real = mask.sum(1)
    assert all((mask[b, :real[b]].all() and not mask[b, real[b]:].any()) for b in range(B)), "right padding only"

    def lin(v, n):
        return v @ W[n + ".weight"].T + W[n + ".bias"]

    def silu(v):
        return v / (1 + np.exp(-v))

    def gelu_tanh(v):
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    def layer_norm(v, n=None, eps=1e-6):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        y = (v - mu) / np.sqrt(var + eps)
        return y * W[n + ".weight"] + W[n + ".bias"] if n else y

    def rms_norm(v, n, eps=1e-6):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + eps) * W[n + ".weight"]

    def modulate(v, shift, scale):
        return v * (1 + scale[:, None]) + shift[:, None]

    def timestep_embedding(tv, dim=256, max_period=10000):
        half = dim // 2
        if sinusoid_f32:  # the official torch lines, verbatim (float32 exp rounding matters at t ~ 1000)
            freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
            args = (torch.from_numpy(tv).float()[:, None] * freqs[None]).double().numpy()
        else:
            freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
            args = tv[:, None] * freqs[None]
        return np.concatenate([np.cos(args), np.sin(args)], -1)  # cos first

    def t_embedder(prefix, tv):
        return lin(silu(lin(timestep_embedding(tv), prefix + ".mlp.0")), prefix + ".mlp.2")

    def split_heads(v):  # [B, S, 3*H] -> 3 x [B, S, heads, D]  ("B L (K H D) -> K B L H D")
        Bv, S = v.shape[:2]
        r = v.reshape(Bv, S, 3, heads, Dh)
        return r[:, :, 0], r[:, :, 1], r[:, :, 2]

    def attention(q, k, v, allowed):  # q,k,v [B,S,h,D], allowed [B,Sq,Sk] bool
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(Dh)
        s = np.where(allowed[:, None], s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", p, v)
        return o.reshape(o.shape[0], o.shape[1], heads * Dh)

    # 3D RoPE (get_nd_rotary_pos_embed, use_real=True): adjacent-pair rotation.
    tt, th, tw = T // pt, Hh // ph, Ww // pw
    grid = np.stack(np.meshgrid(np.arange(tt), np.arange(th), np.arange(tw), indexing="ij"), 0).reshape(3, -1)
    cos_l, sin_l = [], []
    for i, d in enumerate(c["rope_dim_list"]):
        f = 1.0 / (c["rope_theta"] ** (np.arange(0, d, 2)[: d // 2] / d))
        ang = np.outer(grid[i], f)
        cos_l.append(np.repeat(np.cos(ang), 2, axis=1))
        sin_l.append(np.repeat(np.sin(ang), 2, axis=1))
    fcos, fsin = np.concatenate(cos_l, 1), np.concatenate(sin_l, 1)  # [N, D]

    def rope(v):  # [B, N, h, D]
        pairs = v.reshape(*v.shape[:-1], -1, 2)
        rot = np.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(v.shape)
        return v * fcos[None, :, None] + rot * fsin[None, :, None]

    # Embeddings.
    N = tt * th * tw
    patches = x.reshape(B, C, tt, pt, th, ph, tw, pw).transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, N, -1)
    img = patches @ W["img_in.proj.weight"].reshape(Hd, -1).T + W["img_in.proj.bias"]
    vec = t_embedder("time_in", t) + lin(silu(lin(inp["text_states_2"].astype(np.float64), "vector_in.in_layer")),
                                         "vector_in.out_layer")
    if c["guidance_embed"]:
        vec = vec + t_embedder("guidance_in", inp["guidance"].astype(np.float64))

    # Token refiner.
    mf = mask[..., None].astype(np.float64)
    pooled = (text * mf).sum(1) / mf.sum(1)
    cond = t_embedder("txt_in.t_embedder", t) + lin(silu(lin(pooled, "txt_in.c_embedder.linear_1")),
                                                    "txt_in.c_embedder.linear_2")
    txt = lin(text, "txt_in.input_embedder")
    if mask_mode == "official":
        r_allowed = mask[:, None, :] & mask[:, :, None]
        r_allowed[:, :, 0] = True
    else:
        r_allowed = np.broadcast_to(mask[:, None, :], (B, L, L))
    for n in range(c["refiner_depth"]):
        p = f"txt_in.individual_token_refiner.blocks.{n}."
        g_msa, g_mlp = np.split(lin(silu(cond), p + "adaLN_modulation.1"), 2, -1)
        q, k, v = split_heads(lin(layer_norm(txt, p + "norm1"), p + "self_attn_qkv"))
        txt = txt + lin(attention(q, k, v, r_allowed), p + "self_attn_proj") * g_msa[:, None]
        h = lin(silu(lin(layer_norm(txt, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
        txt = txt + h * g_mlp[:, None]

    # Joint-attention mask over [img | txt].
    S = N + L
    if mask_mode == "official":  # get_cu_seqlens: segment [0, N + real) and segment [N + real, S)
        seg = (np.arange(S)[None] >= (N + real)[:, None]).astype(int)
        allowed = seg[:, :, None] == seg[:, None, :]
    else:
        key_ok = np.concatenate([np.ones((B, N), bool), mask], 1)
        allowed = np.broadcast_to(key_ok[:, None, :], (B, S, S))

    for n in range(c["mm_double_blocks_depth"]):
        p = f"double_blocks.{n}."
        im = np.split(lin(silu(vec), p + "img_mod.linear"), 6, -1)  # shift1 scale1 gate1 shift2 scale2 gate2
        tm = np.split(lin(silu(vec), p + "txt_mod.linear"), 6, -1)
        iq, ik, iv = split_heads(lin(modulate(layer_norm(img), im[0], im[1]), p + "img_attn_qkv"))
        iq, ik = rms_norm(iq, p + "img_attn_q_norm"), rms_norm(ik, p + "img_attn_k_norm")
        iq, ik = rope(iq), rope(ik)
        tq, tk, tv = split_heads(lin(modulate(layer_norm(txt), tm[0], tm[1]), p + "txt_attn_qkv"))
        tq, tk = rms_norm(tq, p + "txt_attn_q_norm"), rms_norm(tk, p + "txt_attn_k_norm")
        a = attention(np.concatenate([iq, tq], 1), np.concatenate([ik, tk], 1), np.concatenate([iv, tv], 1), allowed)
        ia, ta = a[:, :N], a[:, N:]
        img = img + lin(ia, p + "img_attn_proj") * im[2][:, None]
        img = img + lin(gelu_tanh(lin(modulate(layer_norm(img), im[3], im[4]), p + "img_mlp.fc1")),
                        p + "img_mlp.fc2") * im[5][:, None]
        txt = txt + lin(ta, p + "txt_attn_proj") * tm[2][:, None]
        txt = txt + lin(gelu_tanh(lin(modulate(layer_norm(txt), tm[3], tm[4]), p + "txt_mlp.fc1")),
                        p + "txt_mlp.fc2") * tm[5][:, None]

    xs = np.concatenate([img, txt], 1)
    for n in range(c["mm_single_blocks_depth"]):
        p = f"single_blocks.{n}."
        shift, scale, gate = np.split(lin(silu(vec), p + "modulation.linear"), 3, -1)
        h = lin(modulate(layer_norm(xs), shift, scale), p + "linear1")
        qkv, mlp = h[..., : 3 * Hd], h[..., 3 * Hd:]
        q, k, v = split_heads(qkv)
        q, k = rms_norm(q, p + "q_norm"), rms_norm(k, p + "k_norm")
        q = np.concatenate([rope(q[:, :N]), q[:, N:]], 1)
        k = np.concatenate([rope(k[:, :N]), k[:, N:]], 1)
        out = lin(np.concatenate([attention(q, k, v, allowed), gelu_tanh(mlp)], -1), p + "linear2")
        xs = xs + out * gate[:, None]

    img = xs[:, :N]
    shift, scale = np.split(lin(silu(vec), "final_layer.adaLN_modulation.1"), 2, -1)  # official: shift, scale
    o = lin(modulate(layer_norm(img), shift, scale), "final_layer.linear")
    Co = c["out_channels"]
    o = o.reshape(B, tt, th, tw, Co, pt, ph, pw)
    o = np.einsum("nthwcopq->nctohpwq", o)
    return o.reshape(B, Co, tt * pt, th * ph, tw * pw)


# ----------------------------------------------------------------------------------------------

def build(name):
    spec = CONFIGS[name]
    torch.manual_seed(spec["seed"])
    model = HunyuanVideoTransformer3DModel(**spec["diffusers"]).eval()
    rng = np.random.default_rng(spec["seed"])
    with torch.no_grad():
        for pname, p in model.named_parameters():
            v = rng.normal(0.0, WEIGHT_STD, size=tuple(p.shape))
            if "norm" in pname.split(".")[-2] and p.dim() == 1 and pname.endswith("weight"):
                v = 1.0 + v  # norm scales around 1 (LayerNorm / RMSNorm weights)
            p.copy_(torch.from_numpy(np.round(v * QUANT) / QUANT).to(p.dtype))

    B, C, L = spec["B"], spec["diffusers"]["in_channels"], spec["L"]
    mask = np.zeros((B, L), np.float32)
    for b, r in enumerate(spec["real_tokens"]):
        mask[b, :r] = 1
    inp = dict(
        x=rng.standard_normal((B, C, spec["T"], spec["H"], spec["W"])).astype(np.float32),
        t=np.array(spec["t"], np.float32),
        text_states=rng.standard_normal((B, L, spec["diffusers"]["text_embed_dim"])).astype(np.float32),
        text_mask=mask,
        text_states_2=rng.standard_normal((B, spec["diffusers"]["pooled_projection_dim"])).astype(np.float32),
    )
    if spec["guidance"] is not None:
        inp["guidance"] = np.array(spec["guidance"], np.float32)
    return model, inp


def run_diffusers(model, inp, dtype):
    m = model.to(dtype)
    kw = dict(
        hidden_states=torch.from_numpy(inp["x"]).to(dtype),
        timestep=torch.from_numpy(inp["t"]).to(dtype),
        encoder_hidden_states=torch.from_numpy(inp["text_states"]).to(dtype),
        encoder_attention_mask=torch.from_numpy(inp["text_mask"] > 0.5),
        pooled_projections=torch.from_numpy(inp["text_states_2"]).to(dtype),
        return_dict=False,
    )
    if "guidance" in inp:
        kw["guidance"] = torch.from_numpy(inp["guidance"]).to(dtype)
    with torch.no_grad():
        v = m(**kw)[0]
    return v.double().numpy()


def make(name, write):
    spec = CONFIGS[name]
    c = swift_config(spec["diffusers"])
    model, inp = build(name)
    official = diffusers_to_official(model.state_dict(), c)

    # Names and shapes must equal the Swift model's, with nothing extra.
    expected = swift_parameter_shapes(c)
    missing, extra = sorted(set(expected) - set(official)), sorted(set(official) - set(expected))
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    for k, shape in expected.items():
        assert official[k].shape == shape, f"{k}: {official[k].shape} != {shape}"
    n_params = sum(v.size for v in official.values())
    assert n_params == swift_parameter_count(c), (n_params, swift_parameter_count(c))

    v32 = run_diffusers(model, inp, torch.float32)
    v64 = run_diffusers(model, inp, torch.float64)
    ref = official_forward(official, c, inp, "official")
    ref_km = official_forward(official, c, inp, "keymask")
    d_sin = np.abs(official_forward(official, c, inp, "official", sinusoid_f32=False) - ref).max()
    d64, d32 = np.abs(ref - v64).max(), np.abs(ref - v32).max()
    d_mask = np.abs(ref - ref_km).max()
    # Padded text must not reach the video: scramble the padded tokens' states.
    junk = dict(inp)
    junk["text_states"] = inp["text_states"].copy()
    junk["text_states"][inp["text_mask"] < 0.5] = 7.0
    d_pad = np.abs(official_forward(official, c, junk, "official") - ref).max()
    scale = np.abs(ref).max()
    print(f"[{name}] params {n_params}, |v|max {scale:.3f}, std {ref.std():.3f}; max|numpy64 - diffusers64| {d64:.2e}, "
          f"max|numpy64 - diffusers32| {d32:.2e}, official vs key-mask-only masking {d_mask:.2e}, "
          f"padded-text leak {d_pad:.2e}; exact-float64 vs float32 timestep sinusoid {d_sin:.2e}")
    assert d64 < 1e-6, d64
    assert d32 < 1e-5 * max(1.0, scale), d32
    assert d_mask < 1e-10 and d_pad < 1e-10, (d_mask, d_pad)

    if write:
        os.makedirs(OUT_DIR, exist_ok=True)
        path = os.path.join(OUT_DIR, f"dit_parity_{name}.h5")
        with h5py.File(path, "w") as f:
            f.attrs["config"] = json.dumps(c, sort_keys=True)
            g = f.create_group("weights")
            for k in sorted(official):
                a = np.ascontiguousarray(official[k], dtype=np.float32)
                kw = dict(compression="gzip", compression_opts=9, shuffle=True) if a.size > 1024 else {}
                g.create_dataset(k, data=a, track_times=False, **kw)
            g = f.create_group("inputs")
            for k in sorted(inp):
                g.create_dataset(k, data=np.ascontiguousarray(inp[k], dtype=np.float32), track_times=False)
            f.create_group("outputs").create_dataset("v", data=v32.astype(np.float32), track_times=False)
        print(f"[{name}] wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path) / 1024:.0f} KiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="run the self-check only; write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import diffusers
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, h5py {h5py.__version__}, numpy {np.__version__}")
    for name in CONFIGS:
        make(name, write=not args.check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
