import Foundation
import HVComm
import HVModel
import HVTensor

/// Ring attention (context parallel) over the ranks of one communicator, in ring order.
///
/// Shapes (B batch, H heads, D head dim, W = cp ranks, r = this rank):
/// - q [B, H, Sq, D]: this rank's queries (its shard of the video tokens, followed by every
///   text token: text is replicated on every cp rank).
/// - k, v [B, H, S_r, D]: this rank's shard of the ring keys (video), S_r = `shardLengths[r]`;
///   shards may differ in length (`shardRange` splits a sequence not divisible by W), even be 0.
/// - localK, localV [B, H, St, D] with `localMask` [B, St] (nonzero = attend; nil = all): keys
///   every rank holds itself (text). They never travel.
///
/// The K|V blocks travel the ring in chunks of `chunkKeys` keys (the last chunk of a block may
/// be shorter), so a rank never holds a whole remote block. Chunk c of block o leaves rank o
/// in round c and moves one rank per round; in round t a rank receives from r-1 chunk t-s+1 of
/// block r-s for s = 1..W-1 (one chunk of every remote block) and forwards the ones that have
/// further to go, while it computes on the chunks received in round t-1. Rounds run until the
/// longest block has passed the whole ring (`RingSchedule`).
///
/// Forward: out/lse start from the local (text) keys and the own block, then every received
/// chunk is merged into them in place (`FlashAttention.forwardAccumulating`: the online softmax
/// continues from (out, lse) — L = max(La, Lb) + log1p(exp(min - max)) in effect — so no
/// per-chunk output exists).
///
/// Backward: with the global out and lse, each chunk's FlashAttention backward adds its exact
/// share to dQ and gives that chunk's dK|dV contribution. The contribution of rank o+s to chunk
/// c of block o is added to the partial sum arriving from rank o+s-1 and passed on one round
/// later, so dK|dV partials travel with their chunk, one round behind it; rank o-1 sends the
/// complete sum to the owner o, which adds it to its own dK|dV.
///
/// Memory per rank beyond the op's output and gradients: about five rounds of chunks in backward
/// (chunks computed on, chunks arriving, partial sums computed, being sent and arriving), three
/// in forward; ZeroMQ's staging is bounded to about one round by a credit: a rank sends round t
/// only after r+1 has acknowledged receiving round t-1. A round is one chunk of each of the W-1
/// remote blocks, `roundElements` floats of K|V by default. The chunk buffers are mapped from
/// the kernel and unmapped when freed, and transfers run on one communication thread per op
/// (`CommWorker`), overlapped with the round's compute.
///
/// Replicated text: q's text rows, localK/localV get only this rank's part of the gradient
/// (that of its own loss share); summing gradients over the cp ranks (as the trainer does for
/// parameters) gives the full gradient. Every rank must call `attention` (and run backward) in
/// the same order with the same `shardLengths`, B, H, D and `chunkKeys`/`roundElements`; errors
/// of the forward are thrown; a communication failure in backward (whose rules cannot throw)
/// gives zero gradients and is recorded in `failure`, which the caller checks with
/// `takeFailure` after the pass. Transfers use the communicator's wire type: with a bf16
/// wire (`--bf16-wire`), K/V and the dK|dV partial sums are rounded to bf16 at every hop.
/// The schedule needs a `send` that completes without the receiver (true of ZeroMQ over TCP,
/// which buffers): every rank sends a round before it receives it.
public final class RingAttention {
    public let comm: PointToPoint
    /// Keys per chunk of a travelling block; any positive value (need not divide the blocks).
    /// nil: max(`minimumChunkKeys`, roundElements / (2·B·H·D·(W-1))).
    public var chunkKeys: Int?
    /// K|V floats a rank receives per round when `chunkKeys` is nil.
    public var roundElements = RingAttention.defaultRoundElements
    /// 256 KiB of fp32 per round: small next to a block at the lengths where memory matters,
    /// large enough that the per-round cost (a thread, a few messages) stays small.
    public static let defaultRoundElements = 65_536
    /// Floor of the automatic chunk length: with many heads (24 × 128 in the paper's model) the
    /// round budget alone would give chunks of a few keys, too small for efficient GEMM tiles.
    public static let minimumChunkKeys = 64
    /// Calls on this group so far (forward and backward): numbers the point-to-point tags so a
    /// rank that runs a different op is reported instead of mixing buffers.
    private var calls: UInt64 = 0
    private let worker = CommWorker()

    /// The first communication failure inside an op that cannot throw (a backward rule, or the
    /// model's attention call): recorded here, zeros returned in place of the result, and every
    /// later call fails at once without touching the network, until `takeFailure` throws it.
    public private(set) var failure: Error?

    public init(comm: PointToPoint) { self.comm = comm }

    /// Throws (and clears) the recorded failure, if any: callers check after a forward/backward.
    public func takeFailure() throws {
        if let e = failure { failure = nil; throw e }
    }

    /// Records `error` unless an earlier one is pending (the first names the cause).
    func record(_ error: Error) { if failure == nil { failure = error } }

    deinit { worker.stop() }

    public var rank: Int { comm.rank }
    public var worldSize: Int { comm.worldSize }

    public func attention(q: Tensor, k: Tensor, v: Tensor, shardLengths: [Int], localK: Tensor? = nil, localV: Tensor? = nil,
                          localMask: Tensor? = nil, scale: Float? = nil) throws -> Tensor {
        let W = comm.worldSize, r = comm.rank
        precondition(q.rank == 4 && k.rank == 4 && v.rank == 4, "ring attention expects [B, H, S, D]: \(q.shape) \(k.shape) \(v.shape)")
        precondition(shardLengths.count == W, "\(shardLengths.count) shard lengths for \(W) ranks")
        let B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3]
        precondition(k.shape == [B, H, shardLengths[r], D] && v.shape == k.shape,
                     "ring attention rank \(r): k \(k.shape), v \(v.shape), expected [\(B), \(H), \(shardLengths[r]), \(D)]")
        precondition((localK == nil) == (localV == nil), "localK and localV go together")
        if let localK, let localV {
            precondition(localK.rank == 4 && localK.shape[0] == B && localK.shape[1] == H && localK.shape[3] == D && localV.shape == localK.shape,
                         "ring attention: localK \(localK.shape), localV \(localV.shape) for q \(q.shape)")
            if let localMask { precondition(localMask.shape == [B, localK.shape[2]], "ring attention: localMask \(localMask.shape)") }
        }
        if let chunkKeys { precondition(chunkKeys > 0, "chunkKeys must be positive, got \(chunkKeys)") }
        if let failure { throw failure }
        let sc = scale ?? 1 / Float(D).squareRoot()
        // Detached: nothing here is recorded; the op's one backward rule is below.
        let qc = q.contiguous().detached(), kc = k.contiguous().detached(), vc = v.contiguous().detached()
        let lk = localK?.contiguous().detached(), lv = localV?.contiguous().detached(), lm = localMask?.contiguous().detached()
        let plan = RingSchedule(lengths: shardLengths, rank: r, B: B, H: H, D: D,
                                chunkKeys: chunkKeys ?? max(Self.minimumChunkKeys, roundElements / max(1, 2 * B * H * D * max(1, W - 1))))
        let call = nextCall()

        // out [B, H, Sq, D], lse [B, H, Sq]: local keys, then the own block, then every chunk.
        let out: Tensor, lse: Tensor
        if let lk, let lv {
            (out, lse) = FlashAttention.forward(q: qc, k: lk, v: lv, keyMask: lm, scale: sc)
        } else {
            out = Tensor(zeros: [B, H, Sq, D])
            lse = Tensor(repeating: -.infinity, shape: [B, H, Sq])
        }
        var computing = plan.emptySet()    // chunks received in the previous round
        for t in 0..<plan.rounds {
            let arriving = plan.kvSet(receivedBy: r, round: t)
            let held = computing
            try worker.overlapped(comm: W > 1 ? { [self] in
                try exchangeRound(call: call, phase: 0, round: t, plan: plan, k: kc, v: vc, forward: held, receive: arriving,
                                  partialsOut: nil, partialsIn: nil)
            } : nil) {
                if t == 0 {
                    FlashAttention.forwardAccumulating(q: qc, k: kc, v: vc, keyMask: nil, scale: sc, out: out, lse: lse)
                }
                for i in held.items where held.lengths[i] > 0 {
                    FlashAttention.forwardAccumulating(q: qc, k: held.first(i), v: held.second(i), keyMask: nil, scale: sc, out: out, lse: lse)
                }
            }
            computing = arriving
        }
        let inputs = [q, k, v] + (localK.map { [$0, localV!] } ?? [])
        return Tensor.recordCustom("ring_attention", output: out, inputs: inputs) { [self] g in
            do {
                if let failure { throw failure }
                return try backward(q: qc, k: kc, v: vc, localK: lk, localV: lv, localMask: lm, out: out, lse: lse, dout: g,
                                    plan: plan, scale: sc)
            } catch {
                // Backward rules cannot throw: zeros now, the error at the trainer's takeFailure.
                record(RingAttentionFailure(rank: r, phase: "backward", underlying: error))
                return inputs.map { Tensor(zeros: $0.shape) }
            }
        }
    }

    private func backward(q: Tensor, k: Tensor, v: Tensor, localK: Tensor?, localV: Tensor?, localMask: Tensor?, out: Tensor,
                          lse: Tensor, dout: Tensor, plan: RingSchedule, scale: Float) throws -> [Tensor?] {
        let W = comm.worldSize, r = comm.rank
        let g = dout.contiguous()
        let call = nextCall()
        let dq = Tensor(zeros: q.shape)
        var dLocal: [Tensor?] = []
        if let localK, let localV {
            let dkl = Tensor(zeros: localK.shape), dvl = Tensor(zeros: localV.shape)
            FlashAttention.backwardAccumulating(q: q, k: localK, v: localV, keyMask: localMask, out: out, lse: lse, dout: g, scale: scale,
                                                dq: dq, dk: dkl, dv: dvl)
            dLocal = [dkl, dvl]
        }
        // dK, dV of the own block: this rank's share, then the others' sums. Two storages, so
        // that autograd can free dK once accumulated into k.grad while dV waits.
        let dk = Tensor(zeros: k.shape), dv = Tensor(zeros: v.shape)
        var computing = plan.emptySet()    // K|V chunks received in the previous round
        var sending = plan.emptySet()      // partial dK|dV sums computed in the previous round
        for t in 0..<plan.rounds {
            let arriving = plan.kvSet(receivedBy: r, round: t)
            // Partial sums for the chunks computed this round (from r-1's previous round).
            let incoming = plan.kvSet(receivedBy: (r - 1 + W) % W, round: t - 2)
            let computed = plan.set(lengths: computing.lengths)
            let held = computing, outgoing = sending
            try worker.overlapped(comm: W > 1 ? { [self] in
                try exchangeRound(call: call, phase: 1, round: t, plan: plan, k: k, v: v, forward: held, receive: arriving,
                                  partialsOut: outgoing, partialsIn: incoming)
            } : nil) {
                if t == 0 {
                    FlashAttention.backwardAccumulating(q: q, k: k, v: v, keyMask: nil, out: out, lse: lse, dout: g, scale: scale,
                                                        dq: dq, dk: dk, dv: dv)
                }
                for i in held.items where held.lengths[i] > 0 {
                    FlashAttention.backwardAccumulating(q: q, k: held.first(i), v: held.second(i), keyMask: nil, out: out, lse: lse,
                                                        dout: g, scale: scale, dq: dq, dk: computed.first(i), dv: computed.second(i))
                }
            }
            // r-1's item s is this rank's item s+1 (s < W-1); its last item is the own block's chunk.
            for i in incoming.items where incoming.lengths[i] > 0 {
                if i + 1 < W - 1 {
                    addInPlace(computed.pointer(i + 1), incoming.pointer(i), incoming.count(i))
                } else {
                    plan.addOwnChunk(incoming, item: i, chunk: t - W, dk: dk, dv: dv)
                }
            }
            computing = arriving
            sending = computed
        }
        return [dq, dk, dv] + dLocal
    }

    private func nextCall() -> UInt64 { calls += 1; return calls }

    /// Tag of one transfer: call number, phase (0 = forward, 1 = backward), round, part.
    private func tag(_ call: UInt64, phase: UInt64, round: Int, part: UInt64) -> UInt64 {
        precondition(round < 1 << 30, "ring attention: \(round) rounds")
        return call << 36 | phase << 34 | UInt64(round) << 4 | part
    }

    /// One round with r+1 and r-1. Sends: after r+1's credit for round t-1, the own block's chunk
    /// t (part 0), the chunks of `forward` that go further (part 1) and `partialsOut` (part 2).
    /// Receives the same parts from r-1 into `receive` (items 0 | 1...) and `partialsIn`, then
    /// gives r-1 its credit (part 3). Empty parts are skipped by both sides alike.
    private func exchangeRound(call: UInt64, phase: UInt64, round t: Int, plan: RingSchedule, k: Tensor, v: Tensor,
                               forward: ChunkSet, receive: ChunkSet, partialsOut: ChunkSet?, partialsIn: ChunkSet?) throws {
        let W = comm.worldSize, r = comm.rank
        let next = (r + 1) % W, prev = (r - 1 + W) % W
        var credit: Float = 0
        if t > 0 { try comm.receive(&credit, count: 1, from: next, tag: tag(call, phase: phase, round: t - 1, part: 3)) }
        let ownChunk = plan.packOwnChunk(k: k, v: v, chunk: t)
        if let ownChunk { try comm.send(ownChunk.pointer, count: ownChunk.count, to: next, tag: tag(call, phase: phase, round: t, part: 0)) }
        let onward = forward.elements(0..<max(0, W - 2))
        if onward > 0 { try comm.send(forward.pointer(0), count: onward, to: next, tag: tag(call, phase: phase, round: t, part: 1)) }
        if let partialsOut, partialsOut.total > 0 {
            try comm.send(partialsOut.pointer(0), count: partialsOut.total, to: next, tag: tag(call, phase: phase, round: t, part: 2))
        }
        withExtendedLifetime(ownChunk) {}
        if receive.count(0) > 0 { try comm.receive(receive.pointer(0), count: receive.count(0), from: prev, tag: tag(call, phase: phase, round: t, part: 0)) }
        let rest = receive.elements(1..<receive.lengths.count)
        if rest > 0 { try comm.receive(receive.pointer(1), count: rest, from: prev, tag: tag(call, phase: phase, round: t, part: 1)) }
        if let partialsIn, partialsIn.total > 0 {
            try comm.receive(partialsIn.pointer(0), count: partialsIn.total, from: prev, tag: tag(call, phase: phase, round: t, part: 2))
        }
        if t < plan.rounds - 1 { try comm.send(&credit, count: 1, to: prev, tag: tag(call, phase: phase, round: t, part: 3)) }
    }
}

/// The chunked ring's timetable, pure arithmetic and the same on every rank. Block o (rank o's
/// keys, `lengths[o]` of them) is cut into chunks of `chunkKeys`; chunk c leaves rank o in round
/// c and reaches rank o+s at the end of round c+s-1. In round t rank x thus receives item
/// s-1 = chunk t-s+1 of block x-s, s = 1..W-1 (zero keys where that chunk does not exist);
/// it computes on them in round t+1 and sends their dK|dV partial sums in round t+2.
struct RingSchedule {
    let lengths: [Int]
    let rank: Int
    let B: Int, H: Int, D: Int
    let chunkKeys: Int
    var W: Int { lengths.count }
    /// The last partial sum reaches its owner in round chunks - 1 + W.
    var rounds: Int { W == 1 ? 1 : (lengths.map { ($0 + chunkKeys - 1) / chunkKeys }.max() ?? 0) + W }

    /// Keys in chunk c of block o (0 outside the block).
    func chunkLength(block o: Int, chunk c: Int) -> Int {
        c < 0 ? 0 : max(0, min(chunkKeys, lengths[(o % W + W) % W] - c * chunkKeys))
    }

    /// The chunks rank x receives in round t (items s-1 for s = 1..W-1), as [K | V] slots.
    func kvSet(receivedBy x: Int, round t: Int) -> ChunkSet {
        set(lengths: W == 1 ? [] : (1..<W).map { s in chunkLength(block: x - s, chunk: t - s + 1) })
    }

    func emptySet() -> ChunkSet { set(lengths: []) }

    func set(lengths: [Int]) -> ChunkSet { ChunkSet(lengths: lengths, B: B, H: H, D: D) }

    /// Chunk c of this rank's block as one [K | V] buffer (K [B, H, L, D] then V), nil if empty.
    func packOwnChunk(k: Tensor, v: Tensor, chunk c: Int) -> Storage? {
        let L = chunkLength(block: rank, chunk: c), S = lengths[rank]
        if L == 0 { return nil }
        let buf = Storage(mappedZeros: 2 * B * H * L * D)
        for (part, src) in [k, v].enumerated() {
            for bh in 0..<(B * H) {
                (buf.pointer + part * B * H * L * D + bh * L * D).update(from: src.pointer + (bh * S + c * chunkKeys) * D, count: L * D)
            }
        }
        return buf
    }

    /// dK, dV [B, H, S_r, D] of this rank's block += item i of `set`, the others' sum for chunk c.
    func addOwnChunk(_ set: ChunkSet, item i: Int, chunk c: Int, dk: Tensor, dv: Tensor) {
        let L = set.lengths[i], S = lengths[rank]
        precondition(L == chunkLength(block: rank, chunk: c), "ring attention: partial sum of \(L) keys for own chunk \(c)")
        for (dst, src) in [(dk, set.first(i)), (dv, set.second(i))] {
            for bh in 0..<(B * H) {
                addInPlace(dst.pointer + (bh * S + c * chunkKeys) * D, src.pointer + bh * L * D, L * D)
            }
        }
    }
}

/// Chunks of different blocks in one buffer: item i is [K | V] (or [dK | dV]) of `lengths[i]`
/// keys, each part [B, H, L, D] contiguous; items follow each other.
struct ChunkSet: @unchecked Sendable {
    let lengths: [Int]
    let offsets: [Int]
    let total: Int
    let storage: Storage
    let B: Int, H: Int, D: Int

    /// Every element starts at zero.
    init(lengths: [Int], B: Int, H: Int, D: Int) {
        self.lengths = lengths
        self.B = B; self.H = H; self.D = D
        var offsets: [Int] = [], acc = 0
        for L in lengths { offsets.append(acc); acc += 2 * B * H * L * D }
        self.offsets = offsets
        total = acc
        // Mapped straight from the kernel and unmapped when freed: a pass allocates a few of
        // these per round, and from the heap they left it fragmented (RSS grew round by round).
        storage = acc == 0 ? Storage(uninitialized: 0) : Storage(mappedZeros: acc)
    }

    var items: Range<Int> { 0..<lengths.count }
    func count(_ i: Int) -> Int { i < lengths.count ? 2 * B * H * lengths[i] * D : 0 }
    /// Floats of items in `range` (clamped), which are contiguous.
    func elements(_ range: Range<Int>) -> Int { range.clamped(to: items).reduce(0) { $0 + count($1) } }
    func pointer(_ i: Int) -> UnsafeMutablePointer<Float> { storage.pointer + (i < offsets.count ? offsets[i] : total) }
    /// K (or dK) of item i: [B, H, L, D].
    func first(_ i: Int) -> Tensor { Tensor(storage: storage, shape: [B, H, lengths[i], D], offset: offsets[i]) }
    /// V (or dV) of item i.
    func second(_ i: Int) -> Tensor { Tensor(storage: storage, shape: [B, H, lengths[i], D], offset: offsets[i] + B * H * lengths[i] * D) }
}

/// The DiT's joint attention under context parallelism: video K/V over the ring, text K/V local.
public final class ContextParallelAttention: ContextParallel {
    public let ring: RingAttention
    public var rank: Int { ring.rank }
    public var worldSize: Int { ring.worldSize }

    public init(group: PointToPoint) { ring = RingAttention(comm: group) }

    /// q, k, v [B, n + L, heads, D] (video shard, then text) -> [B, n + L, heads * D].
    public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, videoTokens n: Int, totalVideoTokens: Int, keyMask: Tensor?) -> Tensor {
        let B = q.shape[0], S = q.shape[1], heads = q.shape[2], D = q.shape[3], L = S - n
        let lengths = (0..<worldSize).map { shardRange(count: totalVideoTokens, rank: $0, world: worldSize).count }
        precondition(lengths[rank] == n, "context-parallel rank \(rank) holds \(n) video tokens, expected \(lengths[rank]) of \(totalVideoTokens)")
        func heads_(_ t: Tensor, _ start: Int, _ len: Int) -> Tensor { t.slice(axis: 1, start: start, length: len).transpose(1, 2) }
        do {
            let o = try ring.attention(q: q.transpose(1, 2), k: heads_(k, 0, n), v: heads_(v, 0, n), shardLengths: lengths,
                                       localK: L > 0 ? heads_(k, n, L) : nil, localV: L > 0 ? heads_(v, n, L) : nil,
                                       localMask: L > 0 ? keyMask?.slice(axis: 1, start: n, length: L) : nil)
            return o.transpose(1, 2).reshape([B, S, heads * D])
        } catch {
            // The model's attention call cannot throw: zeros now, the error at takeFailure.
            ring.record(error is RingAttentionFailure ? error : RingAttentionFailure(rank: rank, phase: "forward", underlying: error))
            return Tensor(zeros: [B, S, heads * D])
        }
    }

    public func takeFailure() throws { try ring.takeFailure() }
}

/// A communication failure inside ring attention, naming the rank and the pass.
public struct RingAttentionFailure: Error, CustomStringConvertible {
    public let rank: Int, phase: String, underlying: Error
    public var description: String { "context-parallel (ring) attention \(phase) on rank \(rank): \(underlying)" }
}

@inline(__always) func addInPlace(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    for j in 0..<n { dst[j] += src[j] }
}

/// The communication thread of one `RingAttention`, started on first use and kept until the
/// op is released: each round runs its transfers here while the caller computes. One thread for
/// the op's life rather than one per round (a ring pass has tens to hundreds of rounds).
final class CommWorker: @unchecked Sendable {
    private let start = DispatchSemaphore(value: 0), finished = DispatchSemaphore(value: 0)
    private var job: (() throws -> Void)?
    private var error: Error?
    private var stopping = false
    private var running = false

    /// Runs `comm` on the worker while `compute` runs on this thread; rethrows `comm`'s error.
    /// The communicator is used by the worker only while this call lasts (it is not thread-safe).
    func overlapped(comm: (() throws -> Void)?, compute: () -> Void) throws {
        guard let comm else { compute(); return }
        if !running {
            running = true
            let thread = Thread { [self] in loop() }
            thread.stackSize = 1 << 20
            thread.start()
        }
        job = comm
        error = nil
        start.signal()
        compute()
        finished.wait()
        job = nil    // drop the round's buffers now
        if let e = error { throw e }
    }

    private func loop() {
        while true {
            start.wait()
            if stopping { finished.signal(); return }
            do { try job?() } catch { self.error = error }
            finished.signal()
        }
    }

    /// Ends the thread (it holds a reference to this worker until then).
    func stop() {
        guard running else { return }
        stopping = true
        start.signal()
        finished.wait()
        running = false
    }
}
