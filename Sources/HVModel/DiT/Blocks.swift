import HVNN
import HVTensor

/// Dimension legend: B batch, N image tokens, L text tokens, H hidden, h heads, D head dim.

/// `double_blocks.N`: separate weights for the image and text streams, joint attention over
/// [img; txt] with padded text masked as keys, RoPE on image queries/keys only.
public final class MMDoubleStreamBlock: Module {
    public let img_mod: ModulateDiT        // Linear(H, 6H)
    public let img_attn_qkv: Linear        // [3H, H]
    public let img_attn_q_norm: RMSNorm?   // [D]
    public let img_attn_k_norm: RMSNorm?   // [D]
    public let img_attn_proj: Linear       // [H, H]
    public let img_mlp: MLP                // fc1 [4H, H], fc2 [H, 4H]
    public let txt_mod: ModulateDiT
    public let txt_attn_qkv: Linear
    public let txt_attn_q_norm: RMSNorm?
    public let txt_attn_k_norm: RMSNorm?
    public let txt_attn_proj: Linear
    public let txt_mlp: MLP
    let heads: Int

    public init(config c: DiTConfig, rng: inout HVRandom) {
        let H = c.hidden_size
        heads = c.heads_num
        img_mod = ModulateDiT(hidden: H, factor: 6)
        img_attn_qkv = Linear(H, 3 * H, rng: &rng)
        img_attn_q_norm = c.qk_norm ? RMSNorm(c.headDim) : nil
        img_attn_k_norm = c.qk_norm ? RMSNorm(c.headDim) : nil
        img_attn_proj = Linear(H, H, rng: &rng)
        img_mlp = MLP(hidden: H, inner: c.mlpHidden, activation: .geluTanh, rng: &rng)
        txt_mod = ModulateDiT(hidden: H, factor: 6)
        txt_attn_qkv = Linear(H, 3 * H, rng: &rng)
        txt_attn_q_norm = c.qk_norm ? RMSNorm(c.headDim) : nil
        txt_attn_k_norm = c.qk_norm ? RMSNorm(c.headDim) : nil
        txt_attn_proj = Linear(H, H, rng: &rng)
        txt_mlp = MLP(hidden: H, inner: c.mlpHidden, activation: .geluTanh, rng: &rng)
    }

    /// img [B, N, H], txt [B, L, H], vec [B, H] -> (img, txt)
    public func callAsFunction(img: Tensor, txt: Tensor, vec: Tensor, rope: (cos: Tensor, sin: Tensor), keyMask: Tensor?,
                               cp: ContextParallelShard? = nil) -> (Tensor, Tensor) {
        let im = img_mod(vec, factor: 6), tm = txt_mod(vec, factor: 6)
        let N = img.shape[1]
        var (iq, ik, iv) = splitQKV(img_attn_qkv(modulatedLayerNorm(img, shift: im[0], scale: im[1])), heads: heads)
        precondition(rope.cos.shape[0] == N, "double block: rope tables for \(rope.cos.shape[0]) tokens, \(N) video tokens")
        iq = normRotary(iq, img_attn_q_norm, rope)
        ik = normRotary(ik, img_attn_k_norm, rope)
        var (tq, tk, tv) = splitQKV(txt_attn_qkv(modulatedLayerNorm(txt, shift: tm[0], scale: tm[1])), heads: heads)
        tq = normRotary(tq, txt_attn_q_norm, nil)
        tk = normRotary(tk, txt_attn_k_norm, nil)
        let a = jointAttention(Tensor.concat([iq, tq], axis: 1), Tensor.concat([ik, tk], axis: 1), Tensor.concat([iv, tv], axis: 1),
                               videoTokens: N, keyMask: keyMask, cp: cp)
        let ia = a.slice(axis: 1, start: 0, length: N), ta = a.slice(axis: 1, start: N, length: a.shape[1] - N)
        var img = img.addingGated(img_attn_proj(ia), gate: im[2])
        img = img.addingGated(img_mlp(modulatedLayerNorm(img, shift: im[3], scale: im[4])), gate: im[5])
        var txt = txt.addingGated(txt_attn_proj(ta), gate: tm[2])
        txt = txt.addingGated(txt_mlp(modulatedLayerNorm(txt, shift: tm[3], scale: tm[4])), gate: tm[5])
        return (img, txt)
    }
}

/// `single_blocks.N`: one stream over x = [img; txt] with a fused linear1 (QKV + MLP input)
/// and linear2 over [attention ; GELU(mlp)].
public final class MMSingleStreamBlock: Module {
    public let linear1: Linear             // [3H + M, H]
    public let linear2: Linear             // [H, H + M]
    public let q_norm: RMSNorm?
    public let k_norm: RMSNorm?
    public let modulation: ModulateDiT     // Linear(H, 3H)
    let heads: Int, hidden: Int, mlpHidden: Int

    public init(config c: DiTConfig, rng: inout HVRandom) {
        heads = c.heads_num; hidden = c.hidden_size; mlpHidden = c.mlpHidden
        linear1 = Linear(hidden, 3 * hidden + mlpHidden, rng: &rng)
        linear2 = Linear(hidden + mlpHidden, hidden, rng: &rng)
        q_norm = c.qk_norm ? RMSNorm(c.headDim) : nil
        k_norm = c.qk_norm ? RMSNorm(c.headDim) : nil
        modulation = ModulateDiT(hidden: hidden, factor: 3)
    }

    /// x [B, N + L, H] with the first `imageTokens` being video tokens.
    public func callAsFunction(_ x: Tensor, vec: Tensor, imageTokens N: Int, rope: (cos: Tensor, sin: Tensor), keyMask: Tensor?,
                               cp: ContextParallelShard? = nil) -> Tensor {
        let m = modulation(vec, factor: 3)
        // Without a graph (sampling, or a recomputed block's first pass): the MLP part's GELU
        // is applied inside linear1's product.
        let fusedGELU = !GradMode.isEnabled
        let xm = modulatedLayerNorm(x, shift: m[0], scale: m[1])
        let h = fusedGELU ? linear1(xm, geluFromColumn: 3 * hidden) : linear1(xm)
        let parts = h.split([3 * hidden, mlpHidden], axis: -1)
        var (q, k, v) = splitQKV(parts[0], heads: heads)
        precondition(rope.cos.shape[0] == N, "single block: rope tables for \(rope.cos.shape[0]) tokens, \(N) video tokens")
        q = normRotary(q, q_norm, rope)  // rotary on the N video tokens; text tokens pass through
        k = normRotary(k, k_norm, rope)
        let a = jointAttention(q, k, v, videoTokens: N, keyMask: keyMask, cp: cp)
        let out = linear2(concatenating: [a, fusedGELU ? parts[1] : parts[1].gelu()])
        return x.addingGated(out, gate: m[2])
    }
}

/// `final_layer`: LayerNorm (no affine) -> modulate (shift, scale) -> linear to patch pixels.
public final class FinalLayer: Module {
    public let linear: Linear              // [pt*ph*pw*C, H], zero-initialised
    public let adaLN_modulation: Sequential  // .1 = Linear(H, 2H), zero-initialised

    public init(hidden: Int, patchVolume: Int, outChannels: Int) {
        linear = Linear(zeroed: hidden, patchVolume * outChannels)
        adaLN_modulation = Sequential([(1, Linear(zeroed: hidden, 2 * hidden))])
    }

    public func callAsFunction(_ x: Tensor, vec: Tensor) -> Tensor {
        let m = (adaLN_modulation[1] as! Linear)(vec.silu()).chunk(2, axis: -1)  // official order: shift, scale
        return linear(modulatedLayerNorm(x, shift: m[0], scale: m[1]))
    }
}
