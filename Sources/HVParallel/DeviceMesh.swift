/// The ranks of a run as a dp x pp x cp grid: world = dp * pp * cp,
/// rank = (dpRank * pp + ppRank) * cp + cpRank, so the cp ranks of one pipeline stage are
/// neighbours (one host's slots, when cp divides them), then the stages of one replica.
///
/// Gradients are summed over the whole world: every rank's loss is its share of the global
/// loss (its samples' share of the batch x its tokens' share of the sequence; only the last
/// pipeline stage has a loss), and the ZeRO engine shards over all ranks. Ring attention runs
/// within `cpGroup`; activations and their gradients travel between `ppGroup`'s ranks.
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

    public var description: String { pp > 1 ? "dp \(dp) x cp \(cp) x pp \(pp)" : "dp \(dp) x cp \(cp)" }
}
