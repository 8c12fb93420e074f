import Foundation

/// Architecture of a HunyuanVideo diffusion transformer (official `HYVideoDiffusionTransformer`
/// arguments). HYVideo-T/2 (13B): hidden 3072, 24 heads, 20 double + 40 single blocks.
public struct DiTConfig: Codable, Sendable, Equatable {
    public var in_channels = 16
    public var out_channels = 16
    /// (t, h, w)
    public var patch_size = [1, 2, 2]
    public var hidden_size = 3072
    public var heads_num = 24
    public var mlp_width_ratio = 4.0
    public var mm_double_blocks_depth = 20
    public var mm_single_blocks_depth = 40
    /// Head-dim channels per RoPE axis (t, h, w); must sum to hidden_size / heads_num.
    public var rope_dim_list = [16, 56, 56]
    public var rope_theta = 256.0
    /// LLM text states dim (text_states) and CLIP pooled dim (text_states_2).
    public var text_states_dim = 4096
    public var text_states_dim_2 = 768
    public var guidance_embed = false
    /// Token refiner depth (official: 2).
    public var refiner_depth = 2
    public var qk_norm = true

    public init() {}

    public var headDim: Int { hidden_size / heads_num }
    public var mlpHidden: Int { Int(Double(hidden_size) * mlp_width_ratio) }
    public var patchVolume: Int { patch_size.reduce(1, *) }

    /// The 13B HYVideo-T/2 configuration with the guidance embedder (CFG-distilled).
    public static var hunyuan13B: DiTConfig {
        var c = DiTConfig()
        c.guidance_embed = true
        return c
    }

    public enum ValidationError: Error, CustomStringConvertible {
        case invalid(field: String, message: String)
        public var description: String {
            switch self { case .invalid(let f, let m): "model config field '\(f)': \(m)" }
        }
    }

    public func validate() throws {
        func fail(_ f: String, _ m: String) throws -> Never { throw ValidationError.invalid(field: f, message: m) }
        if hidden_size <= 0 { try fail("hidden_size", "must be positive, got \(hidden_size)") }
        if heads_num <= 0 || hidden_size % heads_num != 0 { try fail("heads_num", "\(heads_num) must divide hidden_size \(hidden_size)") }
        if patch_size.count != 3 || patch_size.contains(where: { $0 <= 0 }) { try fail("patch_size", "needs three positive values (t, h, w), got \(patch_size)") }
        if rope_dim_list.count != 3 || rope_dim_list.contains(where: { $0 % 2 != 0 || $0 < 0 }) { try fail("rope_dim_list", "needs three even values, got \(rope_dim_list)") }
        if rope_dim_list.reduce(0, +) != headDim { try fail("rope_dim_list", "sums to \(rope_dim_list.reduce(0, +)) but the head dim is \(headDim)") }
        if headDim % 2 != 0 { try fail("heads_num", "head dim \(headDim) must be even") }
        if mm_double_blocks_depth < 0 || mm_single_blocks_depth < 0 { try fail("mm_double_blocks_depth", "block counts must be >= 0") }
        if refiner_depth < 0 { try fail("refiner_depth", "must be >= 0, got \(refiner_depth)") }
        if !(mlp_width_ratio > 0) || !mlp_width_ratio.isFinite { try fail("mlp_width_ratio", "must be positive") }
        if !(rope_theta > 0) || !rope_theta.isFinite { try fail("rope_theta", "must be positive") }
        if in_channels <= 0 || out_channels <= 0 { try fail("in_channels", "channel counts must be positive") }
        if text_states_dim <= 0 || text_states_dim_2 <= 0 { try fail("text_states_dim", "text dims must be positive") }
    }

    // Decoding with defaults for omitted keys.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = DiTConfig()
        in_channels = try c.decodeIfPresent(Int.self, forKey: .in_channels) ?? d.in_channels
        out_channels = try c.decodeIfPresent(Int.self, forKey: .out_channels) ?? d.out_channels
        patch_size = try c.decodeIfPresent([Int].self, forKey: .patch_size) ?? d.patch_size
        hidden_size = try c.decodeIfPresent(Int.self, forKey: .hidden_size) ?? d.hidden_size
        heads_num = try c.decodeIfPresent(Int.self, forKey: .heads_num) ?? d.heads_num
        mlp_width_ratio = try c.decodeIfPresent(Double.self, forKey: .mlp_width_ratio) ?? d.mlp_width_ratio
        mm_double_blocks_depth = try c.decodeIfPresent(Int.self, forKey: .mm_double_blocks_depth) ?? d.mm_double_blocks_depth
        mm_single_blocks_depth = try c.decodeIfPresent(Int.self, forKey: .mm_single_blocks_depth) ?? d.mm_single_blocks_depth
        rope_dim_list = try c.decodeIfPresent([Int].self, forKey: .rope_dim_list) ?? d.rope_dim_list
        rope_theta = try c.decodeIfPresent(Double.self, forKey: .rope_theta) ?? d.rope_theta
        text_states_dim = try c.decodeIfPresent(Int.self, forKey: .text_states_dim) ?? d.text_states_dim
        text_states_dim_2 = try c.decodeIfPresent(Int.self, forKey: .text_states_dim_2) ?? d.text_states_dim_2
        guidance_embed = try c.decodeIfPresent(Bool.self, forKey: .guidance_embed) ?? d.guidance_embed
        refiner_depth = try c.decodeIfPresent(Int.self, forKey: .refiner_depth) ?? d.refiner_depth
        qk_norm = try c.decodeIfPresent(Bool.self, forKey: .qk_norm) ?? d.qk_norm
    }
}
