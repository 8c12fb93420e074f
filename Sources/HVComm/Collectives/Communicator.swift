/// Collective operations among `worldSize` ranks on fp32 buffers.
///
/// Contract: every rank calls the same collectives in the same order with the same `count`
/// (each call is numbered; a mismatch is detected and reported, not silently mixed up).
/// Buffers are split into `worldSize` contiguous shards by `shardRange`; shard r belongs to
/// rank r. Calls block until done or until the timeout, whose error names the collective, the
/// training step and the ranks waited for. Not thread-safe: one caller thread per communicator.
public protocol Communicator: PointToPoint {
    var rank: Int { get }
    var worldSize: Int { get }
    /// Training step, used in error messages.
    var step: Int { get set }

    /// Sum over ranks, result everywhere.
    func allReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
    /// Sum over ranks; afterwards this rank's shard holds the sum (other shards are scratch).
    func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
    /// Each rank contributes its shard; afterwards every shard is filled everywhere.
    func allGather(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
    /// `root`'s buffer to every rank.
    func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws
    func barrier() throws
    func send(_ buffer: UnsafePointer<Float>, count: Int, to peer: Int, tag: UInt64) throws
    func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from peer: Int, tag: UInt64) throws
}

/// Tagged point-to-point messages within a group of ranks (what ring attention needs).
///
/// Contract: a `receive(from: p, tag: t)` matches the next message rank p sent here; messages
/// from one peer are matched in order, and a different tag or size is reported as a protocol
/// violation. `send` returns when `buffer` may be reused. Not thread-safe: one thread at a time.
public protocol PointToPoint: AnyObject {
    var rank: Int { get }
    var worldSize: Int { get }
    func send(_ buffer: UnsafePointer<Float>, count: Int, to peer: Int, tag: UInt64) throws
    func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from peer: Int, tag: UInt64) throws
}

/// The ranks `members` of a communicator as a point-to-point group: rank i of the group is
/// `members[i]` of the parent (e.g. the context-parallel ranks of one data-parallel replica).
/// Uses the parent's links; the parent must not be used by another thread meanwhile.
public final class PointToPointGroup: PointToPoint {
    public let parent: Communicator
    public let members: [Int]
    public let rank: Int
    public var worldSize: Int { members.count }

    public init(parent: Communicator, members: [Int]) {
        guard let r = members.firstIndex(of: parent.rank) else {
            preconditionFailure("rank \(parent.rank) is not a member of the group \(members)")
        }
        precondition(Set(members).count == members.count && members.allSatisfy { (0..<parent.worldSize).contains($0) },
                     "bad group \(members) in a world of \(parent.worldSize)")
        self.parent = parent
        self.members = members
        rank = r
    }

    public func send(_ buffer: UnsafePointer<Float>, count: Int, to peer: Int, tag: UInt64) throws {
        try parent.send(buffer, count: count, to: members[peer], tag: tag)
    }

    public func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from peer: Int, tag: UInt64) throws {
        try parent.receive(buffer, count: count, from: members[peer], tag: tag)
    }
}

/// Elements [lower, upper) of shard `rank` when `count` elements are split over `world` ranks
/// (sizes differ by at most one; works for count < world).
@inlinable public func shardRange(count: Int, rank: Int, world: Int) -> Range<Int> {
    (count * rank / world)..<(count * (rank + 1) / world)
}

public enum CommError: Error, CustomStringConvertible {
    case timeout(collective: String, step: Int, rank: Int, waitingFor: [Int], seconds: Double)
    case protocolViolation(collective: String, step: Int, rank: Int, peer: Int, detail: String)
    case transport(collective: String, step: Int, rank: Int, underlying: Error)

    public var description: String {
        switch self {
        case .timeout(let c, let s, let r, let w, let secs):
            "\(c) timed out after \(secs)s at step \(s): rank \(r) was waiting for rank(s) \(w.map(String.init).joined(separator: ", ")) — that rank may have died or be stuck; check its log"
        case .protocolViolation(let c, let s, let r, let p, let d):
            "\(c) at step \(s): rank \(r) got a bad message from rank \(p): \(d)"
        case .transport(let c, let s, let r, let e):
            "\(c) at step \(s) on rank \(r): \(e)"
        }
    }
}

/// The one-rank communicator: every collective is the identity.
public final class SoloCommunicator: Communicator {
    public let rank = 0, worldSize = 1
    public var step = 0
    public init() {}
    public func allReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {}
    public func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {}
    public func allGather(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {}
    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {}
    public func barrier() throws {}
    public func send(_ buffer: UnsafePointer<Float>, count: Int, to peer: Int, tag: UInt64) throws {
        throw CommError.protocolViolation(collective: "send", step: step, rank: 0, peer: peer, detail: "no peers in a world of 1")
    }
    public func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from peer: Int, tag: UInt64) throws {
        throw CommError.protocolViolation(collective: "receive", step: step, rank: 0, peer: peer, detail: "no peers in a world of 1")
    }
}
