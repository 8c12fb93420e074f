/// The ranks of a run as a dp x cp grid: world = dp * cp, rank = dpRank * cp + cpRank, so the
/// cp ranks of one data-parallel replica are neighbours (one host's slots, when cp divides them).
///
/// Gradients are summed over the whole world: every rank's loss is its share of the global
/// loss (its samples' share of the batch x its tokens' share of the sequence), and the ZeRO
/// engine shards over all dp x cp ranks. Ring attention runs within `cpGroup`.
public struct DeviceMesh: Equatable, Sendable, CustomStringConvertible {
    public let dp: Int, cp: Int
    public let rank: Int

    public enum MeshError: Error, CustomStringConvertible {
        case notDivisible(world: Int, cp: Int)
        public var description: String {
            switch self {
            case .notDivisible(let w, let cp):
                "train.context_parallel \(cp) must be >= 1 and divide the number of workers (\(w) slots in the hosts file): world = dp x cp"
            }
        }
    }

    public init(world: Int, cp: Int, rank: Int) throws {
        guard cp >= 1, world % cp == 0 else { throw MeshError.notDivisible(world: world, cp: cp) }
        precondition((0..<world).contains(rank), "rank \(rank) outside a world of \(world)")
        self.dp = world / cp
        self.cp = cp
        self.rank = rank
    }

    public var world: Int { dp * cp }
    public var dpRank: Int { rank / cp }
    public var cpRank: Int { rank % cp }
    /// World ranks of this rank's context-parallel group, in ring order.
    public var cpGroup: [Int] { Array((dpRank * cp)..<(dpRank * cp + cp)) }

    public var description: String { "dp \(dp) x cp \(cp)" }
}
