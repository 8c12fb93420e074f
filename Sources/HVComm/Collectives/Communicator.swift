import HVTensor

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

/// The ranks `members` of a communicator as a communicator of their own: rank i of the group is
/// `members[i]` of the parent (the context-parallel ranks of one replica, the ranks that hold
/// one pipeline stage, the stages of one replica). Point-to-point messages go over the parent's
/// links; the collectives run the parent's rings (same shards: `shardRange` over the group),
/// built from tagged point-to-point messages, so groups that share no rank run collectives at
/// the same time. Every member must call the same collectives in the same order. Like ring
/// attention, the rings need a `send` that completes before the receiver reads (ZeroMQ over
/// TCP or Unix sockets; not inproc, which holds a zero-copy payload until it is read). The
/// parent must not be used by another thread meanwhile.
public final class PointToPointGroup: Communicator {
    public let parent: Communicator
    public let members: [Int]
    public let rank: Int
    public var worldSize: Int { members.count }
    public var step: Int {
        get { parent.step }
        set { parent.step = newValue }
    }
    /// Collectives so far: numbers their tags, so a member that runs another collective is
    /// reported (tag mismatch) instead of mixing buffers.
    private var calls: UInt64 = 0

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

    // MARK: Collectives (rings over the members)

    /// Tag of ring step `s` of collective `call`: bit 63 marks group collectives.
    private func tag(_ call: UInt64, _ s: Int) -> UInt64 { 1 << 63 | call << 20 | UInt64(s) }

    private func nextCall() -> UInt64 { calls += 1; return calls }

    private var ring: (next: Int, prev: Int) { ((rank + 1) % worldSize, (rank + worldSize - 1) % worldSize) }

    /// Ring step s sends shard r-s-1 on and adds shard r-s-2 from r-1: after W-1 steps shard r holds the sum.
    public func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let W = worldSize
        if W == 1 { return }
        let call = nextCall(), (next, prev) = ring
        var scratch = [Float](repeating: 0, count: count / W + 1)
        for s in 0..<(W - 1) {
            let out = shardRange(count: count, rank: (rank - s - 1 + 2 * W) % W, world: W)
            let into = shardRange(count: count, rank: (rank - s - 2 + 2 * W) % W, world: W)
            try send(buffer + out.lowerBound, count: out.count, to: next, tag: tag(call, s))
            try scratch.withUnsafeMutableBufferPointer { sp in
                try receive(sp.baseAddress!, count: into.count, from: prev, tag: tag(call, s))
                for j in 0..<into.count { buffer[into.lowerBound + j] += sp[j] }
            }
        }
    }

    /// Ring step s sends shard r-s on and receives shard r-s-1 from r-1. With a bf16 wire the own
    /// shard is rounded first, so every member ends with the same values.
    public func allGather(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let W = worldSize
        if W == 1 { return }
        if (parent as? ZMQRingCommunicator)?.wireDType == .bfloat16 {
            for j in shardRange(count: count, rank: rank, world: W) { buffer[j] = BFloat16(buffer[j]).float }
        }
        let call = nextCall(), (next, prev) = ring
        for s in 0..<(W - 1) {
            let out = shardRange(count: count, rank: (rank - s + W) % W, world: W)
            let into = shardRange(count: count, rank: (rank - s - 1 + 2 * W) % W, world: W)
            try send(buffer + out.lowerBound, count: out.count, to: next, tag: tag(call, s))
            try receive(buffer + into.lowerBound, count: into.count, from: prev, tag: tag(call, s))
        }
    }

    public func allReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        try reduceScatter(buffer, count: count)
        try allGather(buffer, count: count)
    }

    /// Relayed around the ring from `root`.
    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        if worldSize == 1 { return }
        let call = nextCall(), (next, prev) = ring
        if rank != root { try receive(buffer, count: count, from: prev, tag: tag(call, 0)) }
        if next != root { try send(buffer, count: count, to: next, tag: tag(call, 0)) }
    }

    public func barrier() throws {
        var token = [Float](repeating: 1, count: worldSize)
        try token.withUnsafeMutableBufferPointer { try allReduce($0.baseAddress!, count: worldSize) }
        guard token.allSatisfy({ $0 == Float(worldSize) }) else {
            throw CommError.protocolViolation(collective: "group barrier", step: step, rank: parent.rank, peer: -1,
                                              detail: "token sum \(token) != \(worldSize) over ranks \(members)")
        }
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
