import Foundation
import HVNN
import HVTensor

/// Sinusoidal timestep features [B, dim]: cos half first, then sin; frequencies
/// exp(-ln(maxPeriod) * k / (dim/2)). Computed in fp32 exactly as the official
/// `timestep_embedding` does (fp32 frequencies and products): at t ~ 1000 the fp32 rounding of
/// t * freq is visible in the output, so a double-precision version would not match the release.
public func timestepEmbedding(_ t: [Float], dim: Int, maxPeriod: Double = 10000) -> Tensor {
    let half = dim / 2
    let out = Tensor(zeros: [t.count, dim])
    let logPeriod = Float(-Foundation.log(maxPeriod))
    let freqs = (0..<half).map { k in Foundation.exp(logPeriod * Float(k) / Float(half)) }
    for (b, tv) in t.enumerated() {
        for k in 0..<half {
            let arg = tv * freqs[k]
            out.pointer[b * dim + k] = Foundation.cos(arg)
            out.pointer[b * dim + half + k] = Foundation.sin(arg)
        }
    }
    return out
}

/// `time_in` / `guidance_in` / `txt_in.t_embedder`: sinusoid(256) -> mlp.0 -> SiLU -> mlp.2.
public final class TimestepEmbedder: Module {
    public let mlp: Sequential
    public let frequencyDim: Int

    public init(hidden: Int, frequencyDim: Int = 256, rng: inout HVRandom) {
        self.frequencyDim = frequencyDim
        mlp = Sequential([(0, Linear(frequencyDim, hidden, rng: &rng)), (2, Linear(hidden, hidden, rng: &rng))])
    }

    /// t [B] (timesteps in [0, 1000]) -> [B, hidden]
    public func callAsFunction(_ t: [Float]) -> Tensor {
        let l0 = mlp[0] as! Linear, l2 = mlp[2] as! Linear
        return l2(l0(timestepEmbedding(t, dim: frequencyDim)).silu())
    }
}

/// `vector_in`: Linear(in, H) -> SiLU -> Linear(H, H) on the pooled text vector.
public final class MLPEmbedder: Module {
    public let in_layer: Linear
    public let out_layer: Linear

    public init(inDim: Int, hidden: Int, rng: inout HVRandom) {
        in_layer = Linear(inDim, hidden, rng: &rng)
        out_layer = Linear(hidden, hidden, rng: &rng)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { out_layer(in_layer(x).silu()) }
}

/// `txt_in.c_embedder`: linear_1 -> SiLU -> linear_2.
public final class TextProjection: Module {
    public let linear_1: Linear
    public let linear_2: Linear

    public init(inDim: Int, hidden: Int, rng: inout HVRandom) {
        linear_1 = Linear(inDim, hidden, rng: &rng)
        linear_2 = Linear(hidden, hidden, rng: &rng)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { linear_2(linear_1(x).silu()) }
}

/// `img_in`: Conv3d with kernel = stride = patch size, then tokens in (t, h, w) order.
public final class PatchEmbed: Module {
    public let proj: Conv3d

    public init(patch: [Int], inChannels: Int, hidden: Int, rng: inout HVRandom) {
        let k = (t: patch[0], h: patch[1], w: patch[2])
        proj = Conv3d(inChannels, hidden, kernel: k, stride: k, rng: &rng)
    }

    /// x [B, C, T, H, W] -> [B, T'*H'*W', hidden]
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let y = proj(x)
        return y.reshape([y.shape[0], y.shape[1], -1]).transpose(1, 2)
    }
}

/// `*_mod` / `modulation`: SiLU -> Linear(H, factor*H), zero-initialised (adaLN-Zero).
public final class ModulateDiT: Module {
    public let linear: Linear

    public init(hidden: Int, factor: Int) { linear = Linear(zeroed: hidden, factor * hidden) }

    /// vec [B, H] -> `factor` chunks of [B, H]
    public func callAsFunction(_ vec: Tensor, factor: Int) -> [Tensor] { linear(vec.silu()).chunk(factor, axis: -1) }
}

/// Two-layer MLP `fc1` -> act -> `fc2`.
public final class MLP: Module {
    public enum Activation: Sendable { case geluTanh, silu }
    public let fc1: Linear
    public let fc2: Linear
    public let activation: Activation

    public init(hidden: Int, inner: Int, activation: Activation, rng: inout HVRandom) {
        fc1 = Linear(hidden, inner, rng: &rng)
        fc2 = Linear(inner, hidden, rng: &rng)
        self.activation = activation
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        if activation == .geluTanh, !GradMode.isEnabled { return fc2(fc1(x, geluFromColumn: 0)) }  // no graph: one pass
        let h = fc1(x)
        return fc2(activation == .geluTanh ? h.gelu() : h.silu())
    }
}

/// x * (1 + scale) + shift with per-sample [B, H] modulation over tokens of x [B, L, H].
@inline(__always) func modulate(_ x: Tensor, shift: Tensor, scale: Tensor) -> Tensor {
    x * (scale.unsqueeze(1) + 1) + shift.unsqueeze(1)
}

/// modulate(x.layerNorm(eps: 1e-6), shift:, scale:). Without a graph and for one sample, the
/// modulation is the norm's affine (weight 1 + scale, bias shift): one buffer and two passes fewer.
func modulatedLayerNorm(_ x: Tensor, shift: Tensor, scale: Tensor) -> Tensor {
    if !GradMode.isEnabled, x.shape[0] == 1, scale.shape[0] == 1, shift.shape[0] == 1 {
        let H = x.shape[x.rank - 1]
        return x.layerNorm(weight: (scale + 1).reshape([H]), bias: shift.reshape([H]), eps: 1e-6)
    }
    return modulate(x.layerNorm(eps: 1e-6), shift: shift, scale: scale)
}

/// q or k [B, L, heads, D]: the optional QK RMSNorm, then the rotary over the first
/// `rope.cos.shape[0]` tokens (none without tables); one pass when nothing is recorded.
func normRotary(_ x: Tensor, _ norm: RMSNorm?, _ rope: (cos: Tensor, sin: Tensor)?) -> Tensor {
    guard let norm else { return rope.map { x.applyRotary(cos: $0.cos, sin: $0.sin) } ?? x }
    return x.rmsNormRotary(weight: norm.weight, eps: norm.eps, cos: rope?.cos, sin: rope?.sin)
}

/// Multi-head attention over tokens: q, k, v [B, L, heads, D] -> [B, L, heads * D].
func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, keyMask: Tensor?) -> Tensor {
    let B = q.shape[0], L = q.shape[1], heads = q.shape[2], D = q.shape[3]
    let o = Tensor.scaledDotProductAttention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), keyMask: keyMask)
    return o.transpose(1, 2).reshape([B, L, heads * D])
}

/// Fused QKV [B, L, 3 * heads * D] -> (q, k, v) each [B, L, heads, D] (views without a graph).
func splitQKV(_ qkv: Tensor, heads: Int) -> (Tensor, Tensor, Tensor) {
    if let v = qkv.qkvViews(heads: heads) { return v }
    let B = qkv.shape[0], L = qkv.shape[1], D = qkv.shape[2] / (3 * heads)
    let parts = qkv.reshape([B, L, 3, heads, D]).chunk(3, axis: 2)
    return (parts[0].squeeze(2), parts[1].squeeze(2), parts[2].squeeze(2))
}
