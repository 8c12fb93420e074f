import HVNN
import HVTensor

/// The DiT cut into pieces for pipeline parallelism (HVParallel's `PipelineSchedule`): the stem
/// (patch/text/vector embeddings and the token refiner), blocks `k` of the list
/// [double_blocks..., single_blocks...], and the head (final layer). `forwardTokens` is the
/// three composed over all blocks; a pipeline stage runs its share. Each piece calls
/// `blockHooks` around the refiner and every block (ZeRO-3 gathers them there).
///
/// Between pieces the state is one tensor h [B, n + L, H] — [img; txt] for the dual-stream
/// blocks, x for the single-stream ones (the same layout, so a cut may fall anywhere) — plus
/// vec [B, H], which every block and the head read. n is this rank's share of the N video
/// tokens under context parallelism (`contextParallel.videoTokenRange(N)`), N otherwise.
extension HunyuanDiT {
    /// Number of blocks a pipeline partitions: double then single.
    public var pipelineBlockCount: Int { double_blocks.count + single_blocks.count }

    /// What every stage needs besides h and vec, from the inputs' shapes and the text mask
    /// alone (no parameters): RoPE of this rank's video tokens (global positions), the key mask
    /// over [img | txt] and the context-parallel group.
    public func stageContext(xShape: [Int], textMask: Tensor?) -> StageContext {
        let c = config, grid = tokenGrid(xShape), B = xShape[0], N = grid.t * grid.h * grid.w
        var rope = RoPE3D.frequencies(grid: grid, dims: c.rope_dim_list, theta: c.rope_theta)
        var mine = 0..<N, cp: ContextParallelShard? = nil
        if let group = contextParallel {
            mine = group.videoTokenRange(N)
            cp = ContextParallelShard(group: group, totalVideoTokens: N)
            rope = (rope.cos.slice(axis: 0, start: mine.lowerBound, length: mine.count),
                    rope.sin.slice(axis: 0, start: mine.lowerBound, length: mine.count))
        }
        var keyMask: Tensor? = nil
        if let m = textMask { keyMask = Tensor.concat([Tensor(repeating: 1, shape: [B, mine.count]), m], axis: 1) }
        return StageContext(videoTokenRange: mine, rope: rope, keyMask: keyMask, cp: cp)
    }

    /// Stage 0's embeddings and token refiner -> (h [B, n + L, H], vec [B, H]).
    public func stem(_ inp: DiTInputs, context ctx: StageContext) -> (h: Tensor, vec: Tensor) {
        let mine = ctx.videoTokenRange
        var img = img_in(inp.x)                                        // [B, N, H]
        if mine.count != img.shape[1] { img = img.slice(axis: 1, start: mine.lowerBound, length: mine.count) }
        var vec = time_in(inp.t) + vector_in(inp.text_states_2)        // [B, H]
        if let g = guidance_in {
            precondition(inp.guidance != nil, "this model has a guidance embedder: pass guidance (scale x 1000)")
            vec = vec + g(inp.guidance!)
        }
        // The refiner is segment 0: recomputed like a block, so ZeRO-3 can hold its weights only
        // while it runs (forward, and its recomputation in backward).
        let txt: Tensor                                                // [B, L, H]
        blockHooks?.willForward(0)
        if recomputeBlocks {
            let t = inp.t, mask = inp.text_mask, refiner = txt_in
            txt = recompute([inp.text_states], hooks: blockHooks?.recomputeHooks(0)) { a in refiner(a[0], t: t, mask: mask) }
        } else {
            txt = txt_in(inp.text_states, t: inp.t, mask: inp.text_mask)
        }
        blockHooks?.didForward(0)
        return (Tensor.concat([img, txt], axis: 1), vec)
    }

    /// Blocks `range` (indices into [double..., single...]) on h [B, n + L, H] -> h.
    public func blocks(_ range: Range<Int>, h: Tensor, vec: Tensor, context ctx: StageContext) -> Tensor {
        let D = double_blocks.count, N = ctx.videoTokens, L = h.shape[1] - N
        let rope = ctx.rope, keyMask = ctx.keyMask, cp = ctx.cp
        var h = h
        let doubles = range.clamped(to: 0..<D)
        if !doubles.isEmpty {
            var img = h.slice(axis: 1, start: 0, length: N), txt = h.slice(axis: 1, start: N, length: L)
            for k in doubles {
                let block = double_blocks[k]
                blockHooks?.willForward(1 + k)
                defer { blockHooks?.didForward(1 + k) }
                if recomputeBlocks {
                    let both = recompute([img, txt, vec], hooks: blockHooks?.recomputeHooks(1 + k)) { a in
                        let (i, t) = block(img: a[0], txt: a[1], vec: a[2], rope: rope, keyMask: keyMask, cp: cp)
                        return Tensor.concat([i, t], axis: 1)
                    }
                    img = both.slice(axis: 1, start: 0, length: N)
                    txt = both.slice(axis: 1, start: N, length: L)
                } else {
                    (img, txt) = block(img: img, txt: txt, vec: vec, rope: rope, keyMask: keyMask, cp: cp)
                }
            }
            h = Tensor.concat([img, txt], axis: 1)
        }
        for k in range.clamped(to: D..<pipelineBlockCount) {
            let block = single_blocks[k - D]
            blockHooks?.willForward(1 + k)
            defer { blockHooks?.didForward(1 + k) }
            if recomputeBlocks {
                h = recompute([h, vec], hooks: blockHooks?.recomputeHooks(1 + k)) { a in block(a[0], vec: a[1], imageTokens: N, rope: rope, keyMask: keyMask, cp: cp) }
            } else {
                h = block(h, vec: vec, imageTokens: N, rope: rope, keyMask: keyMask, cp: cp)
            }
        }
        return h
    }

    /// The last stage's final layer: h [B, n + L, H] -> velocity tokens [B, n, pt*ph*pw*C].
    public func head(_ h: Tensor, vec: Tensor, context ctx: StageContext) -> Tensor {
        final_layer(h.slice(axis: 1, start: 0, length: ctx.videoTokens), vec: vec)
    }
}

/// Per-batch constants of a pipeline stage's forward (see `stageContext`).
public struct StageContext {
    /// This rank's video tokens (all N without context parallelism).
    public let videoTokenRange: Range<Int>
    public let rope: (cos: Tensor, sin: Tensor)
    public let keyMask: Tensor?
    public let cp: ContextParallelShard?
    public var videoTokens: Int { videoTokenRange.count }
}
