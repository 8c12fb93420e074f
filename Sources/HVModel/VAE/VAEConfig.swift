import Foundation

/// HunyuanVideo's causal 3D VAE (official `AutoencoderKLCausal3D`): 4x8x8 compression,
/// 16 latent channels, channels (128, 256, 512, 512), 2 ResNets per encoder block and 3 per
/// decoder block, GroupNorm(32, eps 1e-6), SiLU, one single-head frame-causal attention in the
/// mid blocks. Latents are multiplied by `scaling_factor` before the DiT.
public struct VAEConfig: Codable, Sendable, Equatable {
    public var in_channels = 3
    public var out_channels = 3
    public var latent_channels = 16
    public var block_out_channels = [128, 256, 512, 512]
    public var layers_per_block = 2
    public var norm_num_groups = 32
    /// Spatial and temporal compression (powers of two).
    public var spatial_compression = 8
    public var temporal_compression = 4
    public var mid_block_attention = true
    public var scaling_factor = 0.476986

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = VAEConfig()
        in_channels = try c.decodeIfPresent(Int.self, forKey: .in_channels) ?? d.in_channels
        out_channels = try c.decodeIfPresent(Int.self, forKey: .out_channels) ?? d.out_channels
        latent_channels = try c.decodeIfPresent(Int.self, forKey: .latent_channels) ?? d.latent_channels
        block_out_channels = try c.decodeIfPresent([Int].self, forKey: .block_out_channels) ?? d.block_out_channels
        layers_per_block = try c.decodeIfPresent(Int.self, forKey: .layers_per_block) ?? d.layers_per_block
        norm_num_groups = try c.decodeIfPresent(Int.self, forKey: .norm_num_groups) ?? d.norm_num_groups
        spatial_compression = try c.decodeIfPresent(Int.self, forKey: .spatial_compression) ?? d.spatial_compression
        temporal_compression = try c.decodeIfPresent(Int.self, forKey: .temporal_compression) ?? d.temporal_compression
        mid_block_attention = try c.decodeIfPresent(Bool.self, forKey: .mid_block_attention) ?? d.mid_block_attention
        scaling_factor = try c.decodeIfPresent(Double.self, forKey: .scaling_factor) ?? d.scaling_factor
    }

    var spatialDownBlocks: Int { Int(log2(Double(spatial_compression))) }
    var temporalDownBlocks: Int { Int(log2(Double(temporal_compression))) }

    /// Encoder block i halves H and W when i < log2(spatial); halves time for the log2(temporal)
    /// blocks just before the last (official `add_time_downsample` rule).
    func downsamples(_ i: Int) -> (time: Bool, space: Bool) {
        let n = block_out_channels.count
        let last = i == n - 1
        return (time: i >= n - 1 - temporalDownBlocks && !last, space: i < spatialDownBlocks && !last)
    }

    public func validate() throws {
        func fail(_ f: String, _ m: String) throws -> Never { throw DiTConfig.ValidationError.invalid(field: f, message: m) }
        if block_out_channels.isEmpty { try fail("block_out_channels", "needs at least one block") }
        for (f, v) in [("in_channels", in_channels), ("out_channels", out_channels), ("latent_channels", latent_channels),
                       ("layers_per_block", layers_per_block), ("norm_num_groups", norm_num_groups)] where v < 1 {
            try fail(f, "must be at least 1, got \(v)")
        }
        if let bad = block_out_channels.first(where: { $0 < 1 }) { try fail("block_out_channels", "channel counts must be at least 1, got \(bad)") }
        // Upper bounds far above any real VAE (the paper's widest block has 512 channels), so a
        // corrupted value is an error rather than a failed allocation.
        for (f, v) in [("in_channels", in_channels), ("out_channels", out_channels), ("latent_channels", latent_channels),
                       ("block_out_channels", block_out_channels.max() ?? 0)] where v > 16384 {
            try fail(f, "\(v) channels is more than hv allows (16384)")
        }
        if layers_per_block > 64 { try fail("layers_per_block", "\(layers_per_block) is more than hv allows (64)") }
        if block_out_channels.count > 16 { try fail("block_out_channels", "\(block_out_channels.count) blocks is more than hv allows (16)") }
        if !(scaling_factor > 0) || !scaling_factor.isFinite { try fail("scaling_factor", "must be a positive number") }
        if let bad = block_out_channels.first(where: { $0 % norm_num_groups != 0 }) {
            try fail("norm_num_groups", "\(norm_num_groups) groups do not divide \(bad) channels")
        }
        for (f, v) in [("spatial_compression", spatial_compression), ("temporal_compression", temporal_compression)] where v < 1 || v > 1 << 15 || v & (v - 1) != 0 {
            try fail(f, "must be a power of two (at most 32768), got \(v)")
        }
        if spatialDownBlocks > block_out_channels.count - 1 || temporalDownBlocks > block_out_channels.count - 1 {
            try fail("block_out_channels", "\(block_out_channels.count) blocks cannot give \(spatial_compression)x/\(temporal_compression)x compression")
        }
    }

    /// Latent frames for `frames` video frames: the first frame alone, then one per `temporal_compression`.
    public func latentFrames(_ frames: Int) -> Int { 1 + (frames - 1) / temporal_compression }
}
