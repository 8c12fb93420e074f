import Foundation
import HVModel
import HVTensor

/// Pipeline parallelism (GPipe's stages, PipeDream-Flush's 1F1B order) for the DiT.
///
/// The blocks [double_blocks..., single_blocks...] are cut into `pp` contiguous stages; stage 0
/// also runs the stem (embeddings, token refiner, and the text encoder), the last stage the
/// final layer and the loss. Between stages travels one packed tensor per micro-batch,
/// [B_m, (N + L) * H + H] = [h ; vec] per sample, forward, and its gradient backward
/// (vec is read by every block, so it rides along with h and its gradient comes back summed).
public struct PipelinePartition: Equatable, Sendable, CustomStringConvertible {
    /// Blocks of each stage (indices into [double..., single...]).
    public let stages: [Range<Int>]
    /// Forward FLOPs per sample of each stage (stem and head included).
    public let flops: [Double]
    public let doubleBlocks: Int

    public enum PartitionError: Error, CustomStringConvertible {
        case tooManyStages(stages: Int, blocks: Int)
        public var description: String {
            switch self {
            case .tooManyStages(let p, let k):
                "train.pipeline_parallel \(p) is more than the model's \(k) blocks (double + single): every stage needs at least one block"
            }
        }
    }

    /// Forward FLOPs per sample of every block, the stem and the head (2 per multiply-add;
    /// attention's QK^T and PV included), for N video and L text tokens.
    public static func forwardFLOPs(_ c: DiTConfig, videoTokens N: Int, textTokens L: Int) -> (blocks: [Double], stem: Double, head: Double) {
        let H = Double(c.hidden_size), M = Double(c.mlpHidden), n = Double(N), l = Double(L), S = n + l
        let attention = 4 * S * S * H
        let double = 2 * S * (3 * H * H + H * H + 2 * H * M) + 2 * (2 * H * 6 * H) + attention
        let single = 2 * S * (H * (3 * H + M) + (H + M) * H) + 2 * H * 3 * H + attention
        let refiner = Double(c.refiner_depth) * (2 * l * (3 * H * H + H * H + 8 * H * H) + 4 * l * l * H)
        let stem = refiner + 2 * n * Double(c.in_channels * c.patchVolume) * H + 2 * l * Double(c.text_states_dim) * H
        let head = 2 * n * H * Double(c.patchVolume * c.out_channels) + 2 * H * 2 * H
        return (Array(repeating: double, count: c.mm_double_blocks_depth) + Array(repeating: single, count: c.mm_single_blocks_depth),
                stem, head)
    }

    /// The contiguous split into `pp` non-empty stages that minimises the largest stage's FLOPs
    /// (exact, by dynamic programming over the cut points).
    public init(config c: DiTConfig, stages pp: Int, videoTokens N: Int, textTokens L: Int) throws {
        let f = Self.forwardFLOPs(c, videoTokens: N, textTokens: L)
        let K = f.blocks.count
        guard pp >= 1, pp <= K else { throw PartitionError.tooManyStages(stages: pp, blocks: K) }
        var prefix = [0.0]
        for x in f.blocks { prefix.append(prefix.last! + x) }
        func cost(_ s: Int, _ r: Range<Int>) -> Double {
            prefix[r.upperBound] - prefix[r.lowerBound] + (s == 0 ? f.stem : 0) + (s == pp - 1 ? f.head : 0)
        }
        // best[s][e]: smallest max cost of stages 0...s covering blocks 0..<e; cut[s][e] its last start.
        var best = Array(repeating: Array(repeating: Double.infinity, count: K + 1), count: pp)
        var cut = Array(repeating: Array(repeating: 0, count: K + 1), count: pp)
        for e in 1...K { best[0][e] = cost(0, 0..<e) }
        if pp > 1 {
            for s in 1..<pp {
                for e in (s + 1)...K {
                    for b in s..<e {
                        let v = max(best[s - 1][b], cost(s, b..<e))
                        if v < best[s][e] { best[s][e] = v; cut[s][e] = b }
                    }
                }
            }
        }
        var ranges: [Range<Int>] = [], e = K
        for s in stride(from: pp - 1, through: 0, by: -1) {
            let b = s == 0 ? 0 : cut[s][e]
            ranges.insert(b..<e, at: 0)
            e = b
        }
        stages = ranges
        flops = ranges.enumerated().map { cost($0.offset, $0.element) }
        doubleBlocks = c.mm_double_blocks_depth
    }

    /// DiT parameters each stage holds (its blocks; the stem on stage 0, the final layer on the
    /// last), from the config alone.
    public func parameterCounts(_ c: DiTConfig) -> [Int] {
        let p = c.partParameterCounts
        return stages.indices.map { s in
            stages[s].reduce(0) { $0 + ($1 < doubleBlocks ? p.doubleBlock : p.singleBlock) }
                + (s == 0 ? p.stem : 0) + (s == stages.count - 1 ? p.finalLayer : 0)
        }
    }

    /// Whether stage `s` holds a top-level part of the DiT (`HunyuanDiT(holding:)`'s names, which
    /// are also the block units' names): its blocks; the stem's parts (`img_in`, `txt_in`,
    /// `time_in`, `vector_in`, `guidance_in`) on stage 0; `final_layer` on the last stage. vec
    /// travels with h, so every part is used by exactly one stage.
    public func holds(_ part: String, stage s: Int) -> Bool {
        let name = part.split(separator: ".")
        if name.count == 2, let k = Int(name[1]), name[0] == "double_blocks" || name[0] == "single_blocks" {
            return stages[s].contains(name[0] == "double_blocks" ? k : doubleBlocks + k)
        }
        return part == "final_layer" ? s == stages.count - 1 : s == 0
    }

    /// Stage `s`'s ZeRO units, from the whole model's (`ZeroEngine.units(of:extraOuter:)`):
    /// stage 0 `outer` without the final layer (embeddings and the text encoder) and `txt_in`,
    /// every stage its blocks, the last stage `final_layer` (the final layer's tensors of `outer`).
    public func units(stage s: Int, of all: [(String, [(String, Tensor)])]) -> [(String, [(String, Tensor)])] {
        var out: [(String, [(String, Tensor)])] = [], head: [(String, Tensor)] = []
        for (name, params) in all {
            if name == "outer" {
                head = params.filter { $0.0.hasPrefix("final_layer.") }
                if s == 0 { out.append((name, params.filter { !$0.0.hasPrefix("final_layer.") })) }
            } else if holds(name, stage: s) {
                out.append((name, params))
            }
        }
        if s == stages.count - 1 { out.append(("final_layer", head)) }
        return out
    }

    /// e.g. `stage 0: stem + double_blocks.0-1 (12.9 MFLOP) | stage 1: single_blocks.0-1 + head (12.8 MFLOP)`.
    public var description: String {
        stages.indices.map { s in
            let r = stages[s]
            var parts: [String] = []
            if s == 0 { parts.append("stem") }
            let D = doubleBlocks
            let d = r.clamped(to: 0..<D), g = r.clamped(to: D..<Int.max)
            if !d.isEmpty { parts.append(d.count == 1 ? "double_blocks.\(d.lowerBound)" : "double_blocks.\(d.lowerBound)-\(d.upperBound - 1)") }
            if !g.isEmpty { parts.append(g.count == 1 ? "single_blocks.\(g.lowerBound - D)" : "single_blocks.\(g.lowerBound - D)-\(g.upperBound - 1 - D)") }
            if s == stages.count - 1 { parts.append("head") }
            return "stage \(s): " + parts.joined(separator: " + ") + String(format: " (%.2f MFLOP fwd/sample)", flops[s] / 1e6)
        }.joined(separator: " | ")
    }
}

/// The order in which one stage runs its micro-batches' forwards and backwards.
public enum PipelineOp: Equatable, Sendable {
    case forward(Int), backward(Int)
}

public enum PipelineSchedule {
    /// 1F1B (PipeDream-Flush): stage s of p runs min(p - 1 - s, m) warm-up forwards, then
    /// alternates one forward and one backward, then drains the remaining backwards. At most
    /// p - s micro-batches' activations are alive on stage s (GPipe: m).
    public static func oneFOneB(stage s: Int, stages p: Int, microBatches m: Int) -> [PipelineOp] {
        precondition((0..<p).contains(s) && m >= 1)
        let warmup = min(p - 1 - s, m)
        var ops: [PipelineOp] = (0..<warmup).map { .forward($0) }
        for i in 0..<(m - warmup) { ops += [.forward(warmup + i), .backward(i)] }
        ops += ((m - warmup)..<m).map { .backward($0) }
        return ops
    }

    /// The idle share of each stage under 1F1B with equal stage times: (p - 1) / (m + p - 1).
    public static func bubbleFraction(stages p: Int, microBatches m: Int) -> Double { Double(p - 1) / Double(m + p - 1) }
}
