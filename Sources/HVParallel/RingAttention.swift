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
/// Forward: each rank computes attention of q on its local keys and on the K/V block it holds,
/// keeps (out, log-sum-exp) and merges block after block with the online softmax in fp32:
/// L = max(La, Lb) + log1p(exp(min - max)), O = exp(La - L)·Oa + exp(Lb - L)·Ob. The next block
/// is received from rank r-1 (and the held one sent to r+1) on a communication thread while
/// the current block is computed: W-1 transfers of one K|V buffer.
///
/// Backward: with the global out and lse, each block's FlashAttention backward gives that
/// block's exact share of dQ and its dK/dV contribution. K/V rotate as in the forward; each
/// block's dK|dV accumulator travels with it (one step behind, also overlapped), and after W
/// steps the accumulator has collected every rank's contribution and arrives at its owner.
///
/// Replicated text: q's text rows, localK/localV get only this rank's part of the gradient
/// (that of its own loss share); summing gradients over the cp ranks (as the trainer does for
/// parameters) gives the full gradient. Every rank must call `attention` (and run backward) in
/// the same order with the same `shardLengths`, B, H, D; errors of the forward are thrown,
/// a communication failure in backward stops the process with the error (backward rules cannot
/// throw). Transfers use the communicator's wire type: with a bf16 wire (`--bf16-wire`), K/V
/// and the dK|dV accumulators are rounded to bf16 at every hop.
public final class RingAttention {
    public let comm: PointToPoint
    /// Calls on this group so far (forward and backward): numbers the point-to-point tags so a
    /// rank that runs a different op is reported instead of mixing buffers.
    private var calls: UInt64 = 0

    public init(comm: PointToPoint) { self.comm = comm }

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
        let sc = scale ?? 1 / Float(D).squareRoot()
        let qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous()
        let lk = localK?.contiguous(), lv = localV?.contiguous(), lm = localMask?.contiguous()
        let headRows = B * H
        let call = nextCall()

        // Output accumulators: out [B, H, Sq, D], lse [B, H, Sq].
        let out: Tensor, lse: Tensor
        if let lk, let lv {
            (out, lse) = FlashAttention.forward(q: qc, k: lk, v: lv, keyMask: lm, scale: sc)
        } else {
            out = Tensor(zeros: [B, H, Sq, D])
            lse = Tensor(repeating: -.infinity, shape: [B, H, Sq])
        }
        var ring = KVRing(k: kc, v: vc, lengths: shardLengths, rank: r)
        for s in 0..<W {
            let src = (r - s + W) % W
            let held = ring.current(owner: src)
            let into = s < W - 1 ? ring.receiveParts() : []
            try overlapped(comm: s < W - 1 ? { [self] in
                try exchange(send: held.parts, receive: into, tag: tag(call, phase: 0, step: s))
            } : nil) {
                let (o, l) = FlashAttention.forward(q: qc, k: held.k, v: held.v, keyMask: nil, scale: sc)
                mergeSoftmax(out: out, lse: lse, block: o, blockLSE: l, rows: headRows * Sq, d: D)
            }
            if s < W - 1 { ring.rotate() }
        }
        let inputs = [q, k, v] + (localK.map { [$0, localV!] } ?? [])
        return Tensor.recordCustom("ring_attention", output: out, inputs: inputs) { [self] g in
            do {
                return try backward(q: qc, k: kc, v: vc, localK: lk, localV: lv, localMask: lm, out: out, lse: lse, dout: g,
                                    shardLengths: shardLengths, scale: sc)
            } catch {
                fatalError("ring attention backward on rank \(r): \(error)")
            }
        }
    }

    private func backward(q: Tensor, k: Tensor, v: Tensor, localK: Tensor?, localV: Tensor?, localMask: Tensor?, out: Tensor,
                          lse: Tensor, dout: Tensor, shardLengths: [Int], scale: Float) throws -> [Tensor?] {
        let W = comm.worldSize, r = comm.rank
        let B = q.shape[0], H = q.shape[1], D = q.shape[3]
        let g = dout.contiguous()
        let call = nextCall()
        var dq: Tensor
        var dLocal: [Tensor?] = []
        if let localK, let localV {
            let (dql, dkl, dvl) = FlashAttention.backward(q: q, k: localK, v: localV, keyMask: localMask, out: out, lse: lse, dout: g, scale: scale)
            dq = dql
            dLocal = [dkl, dvl]
        } else {
            dq = Tensor(zeros: q.shape)
        }
        var ring = KVRing(k: k, v: v, lengths: shardLengths, rank: r)
        // Gradient accumulators [dK | dV] of the held block (`acc`) and of the one arriving.
        let maxCount = ring.maxCount
        // Storages, so that the final one becomes dK and dV without a copy.
        let accStorage = Storage(uninitialized: maxCount), incomingStorage = Storage(uninitialized: W > 1 ? maxCount : 0)
        let acc = accStorage.pointer, incoming = incomingStorage.pointer
        for s in 0..<W {
            let src = (r - s + W) % W
            let held = ring.current(owner: src)
            let n = held.count
            // Step s receives the accumulator of block `src` (sent by rank r-1 after its step s-1)
            // and sends the one of block src+1 (after this rank's step s-1) onwards.
            let sendAcc = s > 0, sendKV = s < W - 1
            var block: (dq: Tensor, dk: Tensor, dv: Tensor)?
            let accCount = ring.count(owner: (src + 1) % W)
            let into = sendKV ? ring.receiveParts() : []
            try overlapped(comm: (sendAcc || sendKV) ? { [self] in
                if sendAcc {
                    try exchange(send: [(UnsafePointer(acc), accCount)], receive: [(incoming, n)], tag: tag(call, phase: 1, step: s))
                }
                if sendKV { try exchange(send: held.parts, receive: into, tag: tag(call, phase: 0, step: s)) }
            } : nil) {
                block = FlashAttention.backward(q: q, k: held.k, v: held.v, keyMask: nil, out: out, lse: lse, dout: g, scale: scale)
            }
            let (dqb, dkb, dvb) = block!
            addInPlace(dq.pointer, dqb.pointer, dq.count)
            // acc = incoming (others' contributions to block src) + this rank's [dK | dV].
            let half = n / 2
            if sendAcc {
                for j in 0..<half { acc[j] = incoming[j] + dkb.pointer[j] }
                for j in 0..<half { acc[half + j] = incoming[half + j] + dvb.pointer[j] }
            } else {
                acc.update(from: dkb.pointer, count: half)
                (acc + half).update(from: dvb.pointer, count: half)
            }
            if sendKV { ring.rotate() }
        }
        // The last accumulator belongs to rank r+1; ours arrives from r-1.
        let own = ring.count(owner: r)
        if W > 1 {
            try exchange(send: [(UnsafePointer(acc), ring.count(owner: (r + 1) % W))], receive: [(incoming, own)], tag: tag(call, phase: 1, step: W))
        }
        // dK, dV: views of the received accumulator [dK | dV].
        let final = W > 1 ? incomingStorage : accStorage
        let dk = Tensor(storage: final, shape: k.shape), dv = Tensor(storage: final, shape: v.shape, offset: own / 2)
        return [dq, dk, dv] + dLocal
    }

    private func nextCall() -> UInt64 { calls += 1; return calls }

    /// Tag of one transfer: call number, phase (0 = K|V, 1 = dK|dV), ring step, part.
    private func tag(_ call: UInt64, phase: UInt64, step: Int) -> UInt64 { call << 24 | phase << 20 | UInt64(step) << 4 }

    /// Sends `send` (parts in order) to rank r+1 and receives `receive` from rank r-1. Odd ranks
    /// receive first so that a send that waits for its receiver (zero-copy over inproc) cannot
    /// deadlock the ring.
    private func exchange(send: [(UnsafePointer<Float>, Int)], receive: [(UnsafeMutablePointer<Float>, Int)], tag: UInt64) throws {
        let W = comm.worldSize, r = comm.rank
        let next = (r + 1) % W, prev = (r - 1 + W) % W
        func sendAll() throws { for (i, p) in send.enumerated() { try comm.send(p.0, count: p.1, to: next, tag: tag | UInt64(i)) } }
        func receiveAll() throws { for (i, p) in receive.enumerated() { try comm.receive(p.0, count: p.1, from: prev, tag: tag | UInt64(i)) } }
        if r % 2 == 1 {
            try receiveAll()
            try sendAll()
        } else {
            try sendAll()
            try receiveAll()
        }
    }
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
            fatalError("context-parallel attention on rank \(rank): \(error)")
        }
    }
}

/// The K/V block a rank holds during the ring: first its own (the caller's k, v, not copied),
/// then blocks received from rank r-1 into at most two buffers allocated on first use (one held
/// for compute while the other receives; cp = 2 needs only one). Layout of a received block
/// from rank o: K [B, H, S_o, D] then V [B, H, S_o, D].
struct KVRing {
    let B: Int, H: Int, D: Int
    let lengths: [Int]
    private var buffers: [Storage] = []
    private var heldIndex: Int? = nil    // nil: the caller's tensors
    private var k: Tensor, v: Tensor
    private(set) var owner: Int

    init(k: Tensor, v: Tensor, lengths: [Int], rank: Int) {
        B = k.shape[0]; H = k.shape[1]; D = k.shape[3]
        self.lengths = lengths
        self.k = k; self.v = v
        owner = rank
    }

    var maxCount: Int { 2 * B * H * (lengths.max() ?? 0) * D }
    /// Elements of rank o's packed K|V block.
    func count(owner o: Int) -> Int { 2 * B * H * lengths[o] * D }

    func current(owner o: Int) -> HeldBlock {
        precondition(o == owner, "ring out of step: holds the block of rank \(owner), expected \(o)")
        return HeldBlock(k: k, v: v, parts: [(UnsafePointer(k.pointer), k.count), (UnsafePointer(v.pointer), v.count)], count: k.count + v.count)
    }

    /// Where the next block (rank owner-1's) is received: its K part and V part.
    mutating func receiveParts() -> [(UnsafeMutablePointer<Float>, Int)] {
        let i = heldIndex == 0 ? 1 : 0
        if buffers.count <= i { buffers.append(Storage(uninitialized: maxCount)) }
        let n = count(owner: (owner - 1 + lengths.count) % lengths.count) / 2
        return [(buffers[i].pointer, n), (buffers[i].pointer + n, n)]
    }

    /// The block just received becomes the held one.
    mutating func rotate() {
        let i = heldIndex == 0 ? 1 : 0
        owner = (owner - 1 + lengths.count) % lengths.count
        heldIndex = i
        let shape = [B, H, lengths[owner], D]
        k = Tensor(storage: buffers[i], shape: shape)
        v = Tensor(storage: buffers[i], shape: shape, offset: B * H * lengths[owner] * D)
    }
}

struct HeldBlock: @unchecked Sendable {
    let k: Tensor, v: Tensor
    /// K and V to send onwards.
    let parts: [(UnsafePointer<Float>, Int)]
    /// Elements of K and V together.
    let count: Int
}

/// Online-softmax merge of a block's (o, l) into the accumulators (out, lse), row by row;
/// rows = B·H·Sq of d values. A block row with l = -inf (all keys masked) changes nothing.
func mergeSoftmax(out: Tensor, lse: Tensor, block: Tensor, blockLSE: Tensor, rows: Int, d: Int) {
    let O = out.pointer, L = lse.pointer, o = block.pointer, l = blockLSE.pointer
    for i in 0..<rows {
        let la = L[i], lb = l[i]
        if lb == -.infinity { continue }
        let dst = O + i * d, src = o + i * d
        if la == -.infinity {
            dst.update(from: src, count: d)
            L[i] = lb
            continue
        }
        let hi = max(la, lb), lo = min(la, lb)
        let merged = hi + log1p(exp(lo - hi))
        let wa = exp(la - merged), wb = exp(lb - merged)
        for c in 0..<d { dst[c] = wa * dst[c] + wb * src[c] }
        L[i] = merged
    }
}

@inline(__always) func addInPlace(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    for j in 0..<n { dst[j] += src[j] }
}

/// Runs `comm` on its own thread while `compute` runs on this one; rethrows `comm`'s error.
/// The communicator is used by that thread only while this call lasts (it is not thread-safe).
func overlapped(comm: (() throws -> Void)?, compute: () -> Void) throws {
    guard let comm else { compute(); return }
    let task = CommTask(comm)
    let thread = Thread { task.run() }
    thread.stackSize = 1 << 20
    thread.start()
    compute()
    task.done.wait()
    if let e = task.error { throw e }
}

final class CommTask: @unchecked Sendable {
    let body: () throws -> Void
    var error: Error?
    let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping () throws -> Void) { self.body = body }
    func run() {
        do { try body() } catch { self.error = error }
        done.signal()
    }
}
