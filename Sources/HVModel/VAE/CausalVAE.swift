import Foundation
import HVNN
import HVTensor

/// Dimension legend: B batch, C channels, T frames, H/W height/width. Video tensors are
/// [B, C, T, H, W]; latents [B, 16, 1 + (T-1)/4, H/8, W/8].

/// `CausalConv3d`: replicate padding, kt-1 frames in front and none behind, kh/2 and kw/2 around.
public final class CausalConv3d: Module {
    public let conv: Conv3d
    public init(_ cin: Int, _ cout: Int, kernel: Int = 3, stride: (t: Int, h: Int, w: Int) = (1, 1, 1), rng: inout HVRandom) {
        conv = Conv3d(cin, cout, kernel: (kernel, kernel, kernel), stride: stride,
                      padding: .causal(kernel: (kernel, kernel, kernel), mode: .replicate), rng: &rng)
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
}

/// `ResnetBlockCausal3D`: GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> conv, plus a 1x1x1 shortcut when widths differ.
public final class ResnetBlockCausal3D: Module {
    public let norm1: GroupNorm
    public let conv1: CausalConv3d
    public let norm2: GroupNorm
    public let conv2: CausalConv3d
    public let conv_shortcut: CausalConv3d?
    public init(_ cin: Int, _ cout: Int, groups: Int, rng: inout HVRandom) {
        norm1 = GroupNorm(groups: groups, channels: cin)
        conv1 = CausalConv3d(cin, cout, rng: &rng)
        norm2 = GroupNorm(groups: groups, channels: cout)
        conv2 = CausalConv3d(cout, cout, rng: &rng)
        conv_shortcut = cin != cout ? CausalConv3d(cin, cout, kernel: 1, rng: &rng) : nil
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let h = conv2(norm2.thenSiLU(conv1(norm1.thenSiLU(x))))
        return (conv_shortcut.map { $0(x) } ?? x) + h
    }
}

/// `DownsampleCausal3D`: a stride-2 causal conv (time and/or space).
public final class DownsampleCausal3D: Module {
    public let conv: CausalConv3d
    public init(_ c: Int, time: Bool, space: Bool, rng: inout HVRandom) {
        conv = CausalConv3d(c, c, stride: (time ? 2 : 1, space ? 2 : 1, space ? 2 : 1), rng: &rng)
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
}

/// `UpsampleCausal3D`: nearest x2 (the first frame only spatially, so 1 + 2(T-1) frames), then a conv.
public final class UpsampleCausal3D: Module {
    public let conv: CausalConv3d
    let time: Bool, space: Bool
    public init(_ c: Int, time: Bool, space: Bool, rng: inout HVRandom) {
        conv = CausalConv3d(c, c, rng: &rng)
        self.time = time; self.space = space
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let s = space ? 2 : 1
        return conv(x.causalUpsampleNearest(scale: (time ? 2 : 1, s, s)))
    }
}

/// Single-head attention over all T*H*W positions with a frame-causal mask (a position sees its
/// own and earlier frames), GroupNorm first, residual added (diffusers `Attention` naming).
public final class CausalAttention3D: Module {
    public let group_norm: GroupNorm
    public let to_q: Linear
    public let to_k: Linear
    public let to_v: Linear
    public let to_out: Sequential
    public init(_ c: Int, groups: Int, rng: inout HVRandom) {
        group_norm = GroupNorm(groups: groups, channels: c)
        to_q = Linear(c, c, rng: &rng); to_k = Linear(c, c, rng: &rng); to_v = Linear(c, c, rng: &rng)
        to_out = Sequential([(0, Linear(c, c, rng: &rng))])
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let B = x.shape[0], C = x.shape[1], T = x.shape[2], H = x.shape[3], W = x.shape[4]
        let tokens = group_norm(x).reshape([B, C, T * H * W]).transpose(1, 2)      // [B, N, C]
        let q = to_q(tokens).unsqueeze(1), k = to_k(tokens).unsqueeze(1), v = to_v(tokens).unsqueeze(1)
        let o = Tensor.scaledDotProductAttention(q, k, v, causalBlock: H * W).squeeze(1)
        let out = (to_out[0] as! Linear)(o).transpose(1, 2).reshape([B, C, T, H, W])
        return x + out
    }
}

/// `UNetMidBlockCausal3D`: resnet, (attention, resnet).
public final class MidBlockCausal3D: Module {
    public let attentions: [CausalAttention3D]
    public let resnets: [ResnetBlockCausal3D]
    public init(_ c: Int, groups: Int, attention: Bool, rng: inout HVRandom) {
        var r = [ResnetBlockCausal3D(c, c, groups: groups, rng: &rng)]
        attentions = attention ? [CausalAttention3D(c, groups: groups, rng: &rng)] : []
        r.append(ResnetBlockCausal3D(c, c, groups: groups, rng: &rng))
        resnets = r
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = resnets[0](x)
        if let a = attentions.first { h = a(h) }
        return resnets[1](h)
    }
}

public final class DownEncoderBlockCausal3D: Module {
    public let resnets: [ResnetBlockCausal3D]
    public let downsamplers: [DownsampleCausal3D]
    init(_ cin: Int, _ cout: Int, layers: Int, groups: Int, down: (time: Bool, space: Bool), rng: inout HVRandom) {
        var r: [ResnetBlockCausal3D] = []
        for l in 0..<layers { r.append(ResnetBlockCausal3D(l == 0 ? cin : cout, cout, groups: groups, rng: &rng)) }
        resnets = r
        downsamplers = down.time || down.space ? [DownsampleCausal3D(cout, time: down.time, space: down.space, rng: &rng)] : []
    }
    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for r in resnets { h = r(h) }
        for d in downsamplers { h = d(h) }
        return h
    }
}

public final class UpDecoderBlockCausal3D: Module {
    public let resnets: [ResnetBlockCausal3D]
    public let upsamplers: [UpsampleCausal3D]
    init(_ cin: Int, _ cout: Int, layers: Int, groups: Int, up: (time: Bool, space: Bool), rng: inout HVRandom) {
        var r: [ResnetBlockCausal3D] = []
        for l in 0..<layers { r.append(ResnetBlockCausal3D(l == 0 ? cin : cout, cout, groups: groups, rng: &rng)) }
        resnets = r
        upsamplers = up.time || up.space ? [UpsampleCausal3D(cout, time: up.time, space: up.space, rng: &rng)] : []
    }
    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for r in resnets { h = r(h) }
        for u in upsamplers { h = u(h) }
        return h
    }
}

public final class EncoderCausal3D: Module {
    public let conv_in: CausalConv3d
    public let down_blocks: [DownEncoderBlockCausal3D]
    public let mid_block: MidBlockCausal3D
    public let conv_norm_out: GroupNorm
    public let conv_out: CausalConv3d
    init(_ c: VAEConfig, rng: inout HVRandom) {
        let ch = c.block_out_channels
        conv_in = CausalConv3d(c.in_channels, ch[0], rng: &rng)
        var blocks: [DownEncoderBlockCausal3D] = []
        for i in ch.indices {
            blocks.append(DownEncoderBlockCausal3D(i == 0 ? ch[0] : ch[i - 1], ch[i], layers: c.layers_per_block, groups: c.norm_num_groups,
                                                   down: c.downsamples(i), rng: &rng))
        }
        down_blocks = blocks
        mid_block = MidBlockCausal3D(ch.last!, groups: c.norm_num_groups, attention: c.mid_block_attention, rng: &rng)
        conv_norm_out = GroupNorm(groups: c.norm_num_groups, channels: ch.last!)
        conv_out = CausalConv3d(ch.last!, 2 * c.latent_channels, rng: &rng)
    }
    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = conv_in(x)
        for b in down_blocks { h = b(h) }
        return conv_out(conv_norm_out.thenSiLU(mid_block(h)))
    }
}

public final class DecoderCausal3D: Module {
    public let conv_in: CausalConv3d
    public let mid_block: MidBlockCausal3D
    public let up_blocks: [UpDecoderBlockCausal3D]
    public let conv_norm_out: GroupNorm
    public let conv_out: CausalConv3d
    init(_ c: VAEConfig, rng: inout HVRandom) {
        let ch = Array(c.block_out_channels.reversed())
        conv_in = CausalConv3d(c.latent_channels, ch[0], rng: &rng)
        mid_block = MidBlockCausal3D(ch[0], groups: c.norm_num_groups, attention: c.mid_block_attention, rng: &rng)
        var blocks: [UpDecoderBlockCausal3D] = []
        for i in ch.indices {
            // The official rule (`add_spatial_upsample = i < log2(spatial)`, `add_time_upsample`
            // for the log2(temporal) blocks before the last) is the encoder's rule for block i:
            // the first decoder block up-samples space only, time doubles in the next two.
            let up = c.downsamples(i)
            blocks.append(UpDecoderBlockCausal3D(i == 0 ? ch[0] : ch[i - 1], ch[i], layers: c.layers_per_block + 1, groups: c.norm_num_groups,
                                                 up: up, rng: &rng))
        }
        up_blocks = blocks
        conv_norm_out = GroupNorm(groups: c.norm_num_groups, channels: ch.last!)
        conv_out = CausalConv3d(ch.last!, c.out_channels, rng: &rng)
    }
    func callAsFunction(_ z: Tensor) -> Tensor {
        var h = mid_block(conv_in(z))
        for b in up_blocks { h = b(h) }
        return conv_out(conv_norm_out.thenSiLU(h))
    }
}

/// The causal 3D VAE (`AutoencoderKLCausal3D`): encoder -> quant_conv -> Gaussian posterior
/// (mean, logvar clamped to [-30, 20]) -> post_quant_conv -> decoder.
public final class CausalVAE: Module {
    public let config: VAEConfig
    public let encoder: EncoderCausal3D
    public let decoder: DecoderCausal3D
    public let quant_conv: Conv3d
    public let post_quant_conv: Conv3d

    public init(config c: VAEConfig, seed: UInt64) {
        config = c
        var rng = HVRandom(seed: seed).split("vae-init")
        encoder = EncoderCausal3D(c, rng: &rng)
        decoder = DecoderCausal3D(c, rng: &rng)
        quant_conv = Conv3d(2 * c.latent_channels, 2 * c.latent_channels, kernel: (1, 1, 1), rng: &rng)
        post_quant_conv = Conv3d(c.latent_channels, c.latent_channels, kernel: (1, 1, 1), rng: &rng)
        super.init()
        nameParameters()
    }

    /// Posterior of video x [B, 3, T, H, W] (T = 1 + 4k, H and W multiples of 8): (mean, logvar).
    public func encode(_ x: Tensor) -> (mean: Tensor, logvar: Tensor) {
        let T = x.shape[2], H = x.shape[3], W = x.shape[4]
        let s = config.spatial_compression, tc = config.temporal_compression
        precondition((T - 1) % tc == 0 && H % s == 0 && W % s == 0,
                     "VAE input \(T)x\(H)x\(W): frames must be 1 + \(tc)k and height/width multiples of \(s)")
        let moments = quant_conv(encoder(x)).chunk(2, axis: 1)
        return (moments[0], moments[1].clamp(min: -30, max: 20))
    }

    /// z = mean + exp(logvar / 2) * eps.
    public func sample(mean: Tensor, logvar: Tensor, rng: inout HVRandom) -> Tensor {
        mean + (logvar * 0.5).exp() * Tensor.randn(mean.shape, rng: &rng)
    }

    public func decode(_ z: Tensor) -> Tensor { decoder(post_quant_conv(z)) }

    /// KL(q(z|x) || N(0, I)), averaged over latent elements.
    public static func kl(mean: Tensor, logvar: Tensor) -> Tensor {
        ((mean.square() + logvar.exp() - logvar - 1) * 0.5).mean()
    }
}

