/// The ranks of a run as a dp x pp x cp grid: world = dp * pp * cp,
/// rank = (dpRank * pp + ppRank) * cp + cpRank, so the cp ranks of one pipeline stage are
/// neighbours (one host's slots, when cp divides them), then the stages of one replica.
///
/// Every rank's loss is its share of the global loss (its samples' share of the batch x its
/// tokens' share of the sequence; only the last pipeline stage has a loss). A pipeline stage's
/// parameters live only on `stageGroup`, the dp x cp ranks that run that stage: the ZeRO engine
/// sums their gradients and shards the stage's state over them. Ring attention runs within
/// `cpGroup`; activations and their gradients travel between `ppGroup`'s ranks (the same cp
/// rank of each stage), which also add up the stages' gradient norms.
public struct DeviceMesh: Equatable, Sendable, CustomStringConvertible {
    public let dp: Int, cp: Int, pp: Int
    public let rank: Int

    public enum MeshError: Error, CustomStringConvertible {
        case notDivisible(world: Int, cp: Int, pp: Int)
        public var description: String {
            switch self {
            case .notDivisible(let w, let cp, let pp):
                "train.context_parallel \(cp) x train.pipeline_parallel \(pp) must be >= 1 and divide the number of workers (\(w) slots in the hosts file): world = dp x cp x pp"
            }
        }
    }

    public init(world: Int, cp: Int, pp: Int = 1, rank: Int) throws {
        guard cp >= 1, pp >= 1, world % (cp * pp) == 0 else { throw MeshError.notDivisible(world: world, cp: cp, pp: pp) }
        precondition((0..<world).contains(rank), "rank \(rank) outside a world of \(world)")
        self.dp = world / (cp * pp)
        self.cp = cp
        self.pp = pp
        self.rank = rank
    }

    public var world: Int { dp * pp * cp }
    public var dpRank: Int { rank / (cp * pp) }
    public var ppRank: Int { (rank / cp) % pp }
    public var cpRank: Int { rank % cp }
    /// World ranks of this rank's context-parallel group, in ring order.
    public var cpGroup: [Int] { let base = rank - cpRank; return Array(base..<(base + cp)) }
    /// World ranks of the pipeline stages 0..<pp of this rank's replica (same cp rank).
    public var ppGroup: [Int] { (0..<pp).map { (dpRank * pp + $0) * cp + cpRank } }
    /// World ranks that run pipeline stage `s` (every replica's cp ranks), in rank order.
    public func ranks(ofStage s: Int) -> [Int] {
        precondition((0..<pp).contains(s), "stage \(s) outside \(pp) pipeline stages")
        return (0..<dp).flatMap { d in ((d * pp + s) * cp)..<((d * pp + s) * cp + cp) }
    }
    /// World ranks that run this rank's pipeline stage (all ranks when pp is 1).
    public var stageGroup: [Int] { ranks(ofStage: ppRank) }

    public var description: String { pp > 1 ? "dp \(dp) x cp \(cp) x pp \(pp)" : "dp \(dp) x cp \(cp)" }
}
