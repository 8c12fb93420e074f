import HVNN
import HVTensor

/// Per-segment callbacks (index into `blockModules`: 0 is the token refiner, 1 + i block i).
public protocol BlockHooks: AnyObject {
    func willForward(_ block: Int)
    func didForward(_ block: Int)
    func recomputeHooks(_ block: Int) -> RecomputeHooks?
}

/// Context parallelism, applied from outside (HVParallel's ring attention): each of `worldSize`
/// ranks holds the video tokens `videoTokenRange` of every sample plus all text tokens, and the
/// joint attention runs across the ranks.
public protocol ContextParallel: AnyObject {
    var rank: Int { get }
    var worldSize: Int { get }
    /// Joint attention of this rank's tokens: q, k, v [B, n + L, heads, D], the first n being its
    /// video shard of `totalVideoTokens`, the rest all text tokens; keyMask [B, n + L] (text part
    /// masks padding) or nil -> [B, n + L, heads * D].
    func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, videoTokens n: Int, totalVideoTokens: Int, keyMask: Tensor?) -> Tensor
    /// Throws the first communication failure recorded since the last call (attention and its
    /// backward cannot throw, so they record it and return zeros); callers check after each pass.
    func takeFailure() throws
}

extension ContextParallel {
    /// This rank's contiguous share of N video tokens (sizes differ by at most one).
    public func videoTokenRange(_ N: Int) -> Range<Int> { (N * rank / worldSize)..<(N * (rank + 1) / worldSize) }
}

/// Attention over [video | text] tokens on one rank, or across the ranks of `cp`.
func jointAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, videoTokens n: Int, keyMask: Tensor?, cp: ContextParallelShard?) -> Tensor {
    guard let cp else { return attention(q, k, v, keyMask: keyMask) }
    return cp.group.attention(q, k, v, videoTokens: n, totalVideoTokens: cp.totalVideoTokens, keyMask: keyMask)
}

/// The context-parallel group and the global video length of the current forward.
public struct ContextParallelShard {
    public let group: ContextParallel
    public let totalVideoTokens: Int
    public init(group: ContextParallel, totalVideoTokens: Int) { self.group = group; self.totalVideoTokens = totalVideoTokens }
}

/// Inputs of one DiT evaluation. Timesteps are sigma x 1000; guidance is the embedded
/// guidance scale x 1000 (distilled variant only).
public struct DiTInputs {
    public var x: Tensor              // [B, C, T, H, W] latents
    public var t: [Float]             // [B]
    public var text_states: Tensor    // [B, L, text_states_dim]
    public var text_mask: Tensor?     // [B, L], 1 = real token
    public var text_states_2: Tensor  // [B, text_states_dim_2]
    public var guidance: [Float]?     // [B]

    public init(x: Tensor, t: [Float], text_states: Tensor, text_mask: Tensor?, text_states_2: Tensor, guidance: [Float]? = nil) {
        self.x = x; self.t = t; self.text_states = text_states; self.text_mask = text_mask
        self.text_states_2 = text_states_2; self.guidance = guidance
    }
}

/// HunyuanVideo's diffusion transformer (official `HYVideoDiffusionTransformer`).
/// Parameter paths equal the official state-dict keys.
public final class HunyuanDiT: Module {
    public let config: DiTConfig
    public let img_in: PatchEmbed
    public let txt_in: SingleTokenRefiner
    public let time_in: TimestepEmbedder
    public let vector_in: MLPEmbedder
    public let guidance_in: TimestepEmbedder?
    public let double_blocks: [MMDoubleStreamBlock]
    public let single_blocks: [MMSingleStreamBlock]
    public let final_layer: FinalLayer
    /// Recompute each block's forward during backward instead of storing its activations.
    public var recomputeBlocks = false
    /// Called around every block's forward and (with recomputation) backward; ZeRO-3 uses it
    /// to gather a block's parameters just before use and release them after.
    public var blockHooks: BlockHooks?
    /// Context parallelism: when set, `forwardTokens` computes this rank's video tokens only.
    public var contextParallel: ContextParallel?

    /// The parameter groups that are gathered/released together under ZeRO-3 ("segments"): the
    /// token refiner, then one per block; everything else (embeddings, final layer) is `outer`.
    public var blockModules: [Module] { [txt_in] + double_blocks + single_blocks }

    /// `holding` picks the top-level parts (`img_in`, `txt_in`, `time_in`, `vector_in`,
    /// `guidance_in`, `double_blocks.k`, `single_blocks.k`, `final_layer`) whose weights this
    /// instance keeps; a pipeline stage keeps only its own. The others are still drawn from the
    /// init stream, so kept parts equal a whole model's, but released as soon as each is built
    /// (at most one part beyond the kept ones is ever allocated); they keep their names and
    /// shapes and must not be run.
    public init(config c: DiTConfig, seed: UInt64, holding keep: (String) -> Bool = { _ in true }) {
        config = c
        var rng = HVRandom(seed: seed).split("dit-init")
        let H = c.hidden_size
        func held<M: Module>(_ part: String, _ m: M) -> M {
            if !keep(part) { for p in m.parameters() { p.release() } }
            return m
        }
        img_in = held("img_in", PatchEmbed(patch: c.patch_size, inChannels: c.in_channels, hidden: H, rng: &rng))
        txt_in = held("txt_in", SingleTokenRefiner(inDim: c.text_states_dim, hidden: H, heads: c.heads_num, depth: c.refiner_depth, rng: &rng))
        time_in = held("time_in", TimestepEmbedder(hidden: H, rng: &rng))
        vector_in = held("vector_in", MLPEmbedder(inDim: c.text_states_dim_2, hidden: H, rng: &rng))
        guidance_in = c.guidance_embed ? held("guidance_in", TimestepEmbedder(hidden: H, rng: &rng)) : nil
        var d: [MMDoubleStreamBlock] = []
        for k in 0..<c.mm_double_blocks_depth { d.append(held("double_blocks.\(k)", MMDoubleStreamBlock(config: c, rng: &rng))) }
        double_blocks = d
        var s: [MMSingleStreamBlock] = []
        for k in 0..<c.mm_single_blocks_depth { s.append(held("single_blocks.\(k)", MMSingleStreamBlock(config: c, rng: &rng))) }
        single_blocks = s
        final_layer = held("final_layer", FinalLayer(hidden: H, patchVolume: c.patchVolume, outChannels: c.out_channels))
        super.init()
        nameParameters()
    }

    /// Latent grid after patching, (t, h, w).
    public func tokenGrid(_ xShape: [Int]) -> (t: Int, h: Int, w: Int) {
        let p = config.patch_size
        return (xShape[2] / p[0], xShape[3] / p[1], xShape[4] / p[2])
    }

    /// Predicted velocity [B, C_out, T, H, W].
    public func callAsFunction(_ inp: DiTInputs) -> Tensor {
        precondition(contextParallel == nil, "under context parallelism each rank predicts only its tokens: call forwardTokens")
        return unpatchify(forwardTokens(inp), grid: tokenGrid(inp.x.shape))
    }

    /// Predicted velocity in token layout [B, n, pt*ph*pw*C_out] for this rank's video tokens
    /// (`contextParallel?.videoTokenRange(N)`, all N without context parallelism). RoPE
    /// positions are global; every rank embeds the whole latent and keeps its tokens.
    public func forwardTokens(_ inp: DiTInputs) -> Tensor {
        let c = config
        let xs = inp.x.shape
        precondition(xs.count == 5 && xs[1] == c.in_channels, "DiT input must be [B, \(c.in_channels), T, H, W], got \(xs)")
        precondition(xs[2] % c.patch_size[0] == 0 && xs[3] % c.patch_size[1] == 0 && xs[4] % c.patch_size[2] == 0,
                     "latent size \(Array(xs[2...])) is not a multiple of the patch size \(c.patch_size)")
        let ctx = stageContext(xShape: xs, textMask: inp.text_mask)
        let (h, vec) = stem(inp, context: ctx)
        return head(blocks(0..<pipelineBlockCount, h: h, vec: vec, context: ctx), vec: vec, context: ctx)  // [B, n, pt*ph*pw*C]
    }

    /// [B, C, t*pt, h*ph, w*pw] -> [B, t*h*w, C*pt*ph*pw], the inverse of `unpatchify` (targets in
    /// the token layout of `forwardTokens`).
    public func patchify(_ x: Tensor) -> Tensor {
        let p = config.patch_size, B = x.shape[0], C = x.shape[1]
        let g = tokenGrid(x.shape)
        return x.reshape([B, C, g.t, p[0], g.h, p[1], g.w, p[2]])
            .permute([0, 2, 4, 6, 1, 3, 5, 7])
            .reshape([B, g.t * g.h * g.w, C * p[0] * p[1] * p[2]])
    }

    /// [B, t*h*w, C*pt*ph*pw] -> [B, C, t*pt, h*ph, w*pw]  (official "nthwcopq -> nctohpwq").
    public func unpatchify(_ x: Tensor, grid: (t: Int, h: Int, w: Int)) -> Tensor {
        let p = config.patch_size, C = config.out_channels, B = x.shape[0]
        return x.reshape([B, grid.t, grid.h, grid.w, C, p[0], p[1], p[2]])
            .permute([0, 4, 1, 5, 2, 6, 3, 7])
            .reshape([B, C, grid.t * p[0], grid.h * p[1], grid.w * p[2]])
    }
}
