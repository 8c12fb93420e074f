import CHVKernels
import Foundation
import Synchronization

/// Memory-efficient scaled-dot-product attention (FlashAttention-2 style, on the CPU).
///
/// Queries are processed in blocks of `blockQ` rows against key blocks of `blockK` rows with an
/// online softmax; only a blockQ x blockK score tile exists at a time, forward and backward
/// (the backward pass recomputes scores from the saved log-sum-exp). Memory is O(S·D), except
/// that a recorded attention whose probabilities fit `probabilityBudget` keeps them (Sq x Sk per
/// head) for its backward.
public enum FlashAttention {
    nonisolated(unsafe) public static var blockQ = 256
    nonisolated(unsafe) public static var blockK = 256
    /// Heads with D a multiple of 16 run the fused C kernel (`hv_attention_*_head`, AVX2 + FMA)
    /// when the CPU has it; false forces the blocked path over sgemm (tests compare the two).
    nonisolated(unsafe) public static var fused = true
    /// Bytes of attention probabilities (B x H x Sq x Sk floats, keys rounded up to 48) that one
    /// recorded attention may keep from its forward for its backward, which then reads them
    /// instead of recomputing the scores and their exponentials: a fifth of the backward's
    /// products, 13% of a head's forward + backward at 1,056 tokens. Longer sequences, whose
    /// probabilities would not fit, recompute as FlashAttention does. 0: always recompute.
    nonisolated(unsafe) public static var probabilityBudget = 64 << 20

    /// One head: q [Sq, D], k/v [Sk, D] contiguous; keyMask [Sk] (nonzero = attend) or nil.
    /// Writes out [Sq, D] and lse [Sq] (natural log-sum-exp of the scaled scores; -inf for a
    /// row whose keys are all masked, whose output is then 0).
    /// `accumulate`: out/lse already hold the (normalised) output and log-sum-exp over other
    /// keys; the online softmax continues from them (m = lse, l = 1, acc = out) and leaves the
    /// attention over both key sets — no per-call output buffer, as ring attention needs.
    public static func forwardHead(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                   keyMask: UnsafePointer<Float>?, sq: Int, sk: Int, d: Int, scale: Float,
                                   out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                                   causalBlock: Int = 0, rowOffset: Int = 0, colOffset: Int = 0, accumulate: Bool = false) {
        if fused, !accumulate, sq > 0, sk > 0,
           hv_attention_forward_head(q, k, v, keyMask, Int32(sq), Int32(sk), Int32(d), scale, out, lse,
                                     Int32(causalBlock), rowOffset, colOffset) != 0 { return }
        let bq = min(blockQ, max(sq, 1)), bk = min(blockK, max(sk, 1))
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: bq * bk)
        defer { scores.deallocate() }
        var m = [Float](repeating: 0, count: bq), l = [Float](repeating: 0, count: bq)
        var qs = 0
        while qs < sq {
            let nq = min(bq, sq - qs)
            let acc = out + qs * d
            if accumulate {
                for r in 0..<nq {
                    m[r] = lse[qs + r]
                    l[r] = m[r] == -.infinity ? 0 : 1
                    if l[r] == 0 { (acc + r * d).update(repeating: 0, count: d) }
                }
            } else {
                acc.update(repeating: 0, count: nq * d)
                for r in 0..<nq { m[r] = -.infinity; l[r] = 0 }
            }
            var ks = 0
            // Frame-causal masking: global row R may see global columns < (R / block + 1) * block.
            let qLimit = causalBlock > 0 ? ((rowOffset + qs + nq - 1) / causalBlock + 1) * causalBlock - colOffset : Int.max
            while ks < sk {
                let nk = min(bk, sk - ks)
                if ks >= qLimit { break }
                if let keyMask, !(0..<nk).contains(where: { keyMask[ks + $0] != 0 }) { ks += nk; continue }
                BLAS.sgemm(transB: true, m: nq, n: nk, k: d, alpha: scale, a: q + qs * d, lda: d, b: k + ks * d, ldb: d,
                           c: scores, ldc: nk)
                if let keyMask {
                    for j in 0..<nk where keyMask[ks + j] == 0 { for r in 0..<nq { scores[r * nk + j] = -.infinity } }
                }
                if causalBlock > 0 {
                    for r in 0..<nq {
                        let lim = ((rowOffset + qs + r) / causalBlock + 1) * causalBlock - colOffset - ks
                        if lim < nk { for j in max(0, lim)..<nk { scores[r * nk + j] = -.infinity } }
                    }
                }
                for r in 0..<nq {
                    let row = scores + r * nk
                    let mx = rowMax(row, nk)
                    let mNew = max(m[r], mx)
                    if mNew == -.infinity { for j in 0..<nk { row[j] = 0 }; continue }
                    var sum: Float = 0
                    expShifted(row, nk, mNew, &sum)
                    let corr = m[r] == -.infinity ? 0 : Foundation.exp(m[r] - mNew)
                    l[r] = l[r] * corr + sum
                    if corr != 1 { let a = acc + r * d; for c in 0..<d { a[c] *= corr } }
                    m[r] = mNew
                }
                BLAS.sgemm(m: nq, n: d, k: nk, a: scores, lda: nk, b: v + ks * d, ldb: d, beta: 1, c: acc, ldc: d)
                ks += nk
            }
            for r in 0..<nq {
                if l[r] == 0 {
                    (acc + r * d).update(repeating: 0, count: d)
                    lse[qs + r] = -.infinity
                } else {
                    let inv = 1 / l[r]
                    let a = acc + r * d
                    for c in 0..<d { a[c] *= inv }
                    lse[qs + r] = m[r] + Foundation.log(l[r])
                }
            }
            qs += nq
        }
    }

    /// Gradients of one head given dout [Sq, D], the forward output and lse.
    /// dq [Sq, D], dk/dv [Sk, D] are overwritten, or added to (`accumulateDQ`, `accumulateDKV`).
    public static func backwardHead(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                    keyMask: UnsafePointer<Float>?, out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                                    dout: UnsafePointer<Float>, sq: Int, sk: Int, d: Int, scale: Float,
                                    dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                                    causalBlock: Int = 0, colOffset: Int = 0, accumulateDQ: Bool = false, accumulateDKV: Bool = false) {
        if fused, sq > 0, sk > 0,
           hv_attention_backward_head(q, k, v, keyMask, out, lse, dout, Int32(sq), Int32(sk), Int32(d), scale, dq, dk, dv,
                                      Int32(causalBlock), colOffset, accumulateDQ ? 1 : 0, accumulateDKV ? 1 : 0) != 0 { return }
        let bq = min(blockQ, max(sq, 1)), bk = min(blockK, max(sk, 1))
        let p = UnsafeMutablePointer<Float>.allocate(capacity: bq * bk)
        let dp = UnsafeMutablePointer<Float>.allocate(capacity: bq * bk)
        defer { p.deallocate(); dp.deallocate() }
        // delta_r = sum_c dout[r,c] * out[r,c]
        var delta = [Float](repeating: 0, count: sq)
        for r in 0..<sq {
            var s: Float = 0
            for c in 0..<d { s += dout[r * d + c] * out[r * d + c] }
            delta[r] = s
        }
        if !accumulateDQ { dq.update(repeating: 0, count: sq * d) }
        if !accumulateDKV {
            dk.update(repeating: 0, count: sk * d)
            dv.update(repeating: 0, count: sk * d)
        }
        var ks = 0
        while ks < sk {
            let nk = min(bk, sk - ks)
            if let keyMask, !(0..<nk).contains(where: { keyMask[ks + $0] != 0 }) { ks += nk; continue }
            // Causal: rows before the first block that can see column colOffset + ks are skipped.
            var qs = causalBlock > 0 ? min(sq, ((colOffset + ks) / causalBlock) * causalBlock) / bq * bq : 0
            while qs < sq {
                let nq = min(bq, sq - qs)
                BLAS.sgemm(transB: true, m: nq, n: nk, k: d, alpha: scale, a: q + qs * d, lda: d, b: k + ks * d, ldb: d,
                           c: p, ldc: nk)
                for r in 0..<nq {
                    let row = p + r * nk
                    let L = lse[qs + r]
                    if L == -.infinity { for j in 0..<nk { row[j] = 0 }; continue }
                    var unused: Float = 0
                    expShifted(row, nk, L, &unused)
                    if let keyMask { for j in 0..<nk where keyMask[ks + j] == 0 { row[j] = 0 } }
                    if causalBlock > 0 {
                        let lim = ((qs + r) / causalBlock + 1) * causalBlock - colOffset - ks
                        if lim < nk { for j in max(0, lim)..<nk { row[j] = 0 } }
                    }
                }
                // dV_j += P^T dO_i
                BLAS.sgemm(transA: true, m: nk, n: d, k: nq, a: p, lda: nk, b: dout + qs * d, ldb: d, beta: 1, c: dv + ks * d, ldc: d)
                // dP = dO_i V_j^T
                BLAS.sgemm(transB: true, m: nq, n: nk, k: d, a: dout + qs * d, lda: d, b: v + ks * d, ldb: d, c: dp, ldc: nk)
                // dS = P * (dP - delta)
                for r in 0..<nq { hv_softmax_grad_row(p + r * nk, dp + r * nk, nk, delta[qs + r]) }
                BLAS.sgemm(m: nq, n: d, k: nk, alpha: scale, a: dp, lda: nk, b: k + ks * d, ldb: d, beta: 1, c: dq + qs * d, ldc: d)
                BLAS.sgemm(transA: true, m: nk, n: d, k: nq, alpha: scale, a: dp, lda: nk, b: q + qs * d, ldb: d, beta: 1,
                           c: dk + ks * d, ldc: d)
                qs += nq
            }
            ks += nk
        }
    }

    /// row[j] = exp(row[j] - shift); sum += row[j]. -inf entries become 0.
    @inline(__always)
    static func expShifted(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ shift: Float, _ sum: inout Float) {
        sum += hv_exp_shift_sum(row, n, shift)
    }

    @inline(__always)
    static func rowMax(_ row: UnsafePointer<Float>, _ n: Int) -> Float { hv_row_max(row, n) }
}

/// Pointers handed to worker threads; each work item touches disjoint memory.
struct SendablePointers: @unchecked Sendable {
    let q, k, v, out, lse: UnsafeMutablePointer<Float>
    let mask: UnsafeMutablePointer<Float>?
    var g: UnsafeMutablePointer<Float>? = nil
    var dq: UnsafeMutablePointer<Float>? = nil, dk: UnsafeMutablePointer<Float>? = nil, dv: UnsafeMutablePointer<Float>? = nil
    var dqPartials: UnsafeMutablePointer<Float>? = nil
}

/// Runs `body(i)` for i in 0..<n on up to `threads` threads with single-threaded BLAS inside
/// (OpenBLAS's own threading is inefficient on the small tiles of blocked attention).
func parallelFor(_ n: Int, threads: Int, _ body: @Sendable (Int) -> Void) {
    if threads <= 1 || n <= 1 { for i in 0..<n { body(i) }; return }
    let saved = BLAS.threads
    BLAS.threads = 1
    defer { BLAS.threads = saved }
    // Items are claimed one at a time from a shared counter, not dealt out in advance: a core
    // that stalls for a while (common on a shared host) then holds up only the item it is on.
    let next = Atomic<Int>(0)
    Parallel.run(threads: min(threads, n)) { _, _ in
        while true {
            let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= n { break }
            body(i)
        }
    }
}

extension FlashAttention {
    /// Worker threads for attention (default: all cores); the same setting as `Parallel.threads`.
    public static var threads: Int {
        get { Parallel.threads }
        set { Parallel.threads = newValue }
    }
}

extension Tensor {
    /// softmax(q k^T / sqrt(D) + mask) v for q [B, H, Sq, D], k/v [B, H, Sk, D]; `keyMask`
    /// [B, Sk] (nonzero = attend; padded text tokens are 0). Blocked: forms Sq x Sk only to keep
    /// the probabilities for the backward, within `FlashAttention.probabilityBudget`.
    /// Work is split over (batch, head) and, when there are fewer heads than threads, over
    /// query rows (forward) or key ranges (backward, with per-range dQ partials summed after).
    /// `causalBlock` b > 0: query i attends key j only if j < (i / b + 1) * b (frame-causal
    /// attention with b tokens per frame, as in the causal VAE's mid block; needs Sq == Sk).
    public static func scaledDotProductAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, keyMask: Tensor? = nil,
                                                 scale: Float? = nil, causalBlock: Int = 0) -> Tensor {
        precondition(q.rank == 4 && k.rank == 4 && v.rank == 4, "attention expects [B, H, S, D]: \(q.shape) \(k.shape) \(v.shape)")
        let sc = scale ?? 1 / Float(q.shape[3]).squareRoot()
        if !willRecord([q, k, v]), FlashAttention.fused, hv_attention_available() != 0, q.shape[3] % 16 == 0,
           q.shape[2] > 0, k.shape[2] > 0, [q, k, v].allSatisfy({ $0.strides[3] == 1 }) {
            return FlashAttention.forwardInPlace(q, k, v, keyMask: keyMask?.contiguous(), scale: sc, causalBlock: causalBlock)
        }
        let qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous()
        let mc = keyMask?.contiguous()
        let probs = willRecord([q, k, v]) ? FlashAttention.probabilityBuffer(q.shape, keys: k.shape[2]) : nil
        let (out, lse) = FlashAttention.forward(q: qc, k: kc, v: vc, keyMask: mc, scale: sc, causalBlock: causalBlock, probs: probs)
        return record("attention", out, [q, k, v]) { g in
            let (dq, dk, dv) = FlashAttention.backward(q: qc, k: kc, v: vc, keyMask: mc, out: out, lse: lse, dout: g,
                                                       scale: sc, causalBlock: causalBlock, probs: probs)
            return [dq, dk, dv]
        }
    }
}

extension FlashAttention {
    /// Attention with nothing to record (sampling): each head's rows are read where they lie —
    /// q/k/v are typically [B, S, heads, D] tensors transposed to [B, heads, S, D], any strides
    /// with D contiguous — and the output is written as [B, S, heads, D], returned transposed to
    /// [B, heads, S, D]; so no operand is copied into a head-major layout and the caller's
    /// transpose back is contiguous. Needs the fused kernel (D a multiple of 16, AVX2 + FMA).
    static func forwardInPlace(_ q: Tensor, _ k: Tensor, _ v: Tensor, keyMask: Tensor?, scale sc: Float, causalBlock: Int) -> Tensor {
        let B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3], Sk = k.shape[2]
        precondition(k.shape == [B, H, Sk, D] && v.shape == [B, H, Sk, D], "attention: k \(k.shape), v \(v.shape) for q \(q.shape)")
        if let keyMask { precondition(keyMask.shape == [B, Sk], "attention: keyMask \(keyMask.shape), expected [\(B), \(Sk)]") }
        precondition(causalBlock == 0 || Sq == Sk, "causal attention needs as many queries as keys")
        let out = Tensor(uninitialized: [B, Sq, H, D])
        let lse = UnsafeMutablePointer<Float>.allocate(capacity: max(1, B * H * Sq))
        defer { lse.deallocate() }
        let threads = FlashAttention.threads, heads = B * H
        let splits = heads >= threads ? 1 : (threads + heads - 1) / heads
        let qSplit = (Sq + splits - 1) / splits
        struct Operands: @unchecked Sendable {
            let q, k, v, out, lse: UnsafeMutablePointer<Float>
            let mask: UnsafeMutablePointer<Float>?
        }
        let ops = Operands(q: q.pointer, k: k.pointer, v: v.pointer, out: out.pointer, lse: lse, mask: keyMask?.pointer)
        let qs = q.strides, ks = k.strides, vs = v.strides
        parallelFor(heads * splits, threads: threads) { item in
            let i = item / splits, part = item % splits
            let b = i / H, h = i % H
            let r0 = min(Sq, part * qSplit), r1 = min(Sq, r0 + qSplit)
            if r1 <= r0 { return }
            let ran = hv_attention_forward_head_ld(
                ops.q + b * qs[0] + h * qs[1] + r0 * qs[2], qs[2], ops.k + b * ks[0] + h * ks[1], ks[2],
                ops.v + b * vs[0] + h * vs[1], vs[2], ops.mask.map { UnsafePointer($0 + b * Sk) }, Int32(r1 - r0), Int32(Sk),
                Int32(D), sc, ops.out + ((b * Sq + r0) * H + h) * D, H * D, ops.lse + i * Sq + r0, Int32(causalBlock), r0, 0)
            precondition(ran != 0, "fused attention kernel could not run (out of memory for its packed keys and values)")
        }
        withExtendedLifetime((q, k, v, keyMask)) {}
        return out.transpose(1, 2)
    }

    /// Storage for the probabilities of an attention of q [B, H, Sq, D] over `keys` keys, when
    /// they are to be kept for the backward: the fused kernel runs, each thread has whole heads
    /// (as `forward` and `backward` then split the work) and they fit `probabilityBudget`.
    public static func probabilityBuffer(_ q: [Int], keys: Int) -> Tensor? {
        let heads = q[0] * q[1], Sq = q[2], D = q[3]
        guard fused, hv_attention_available() != 0, D % 16 == 0, Sq > 0, keys > 0, heads >= threads else { return nil }
        let count = heads * Sq * Int(hv_attention_probs_stride(Int32(clamping: keys)))
        guard count * 4 <= probabilityBudget else { return nil }
        return Tensor(uninitialized: [count])
    }

    /// Blocked attention outside the graph: q [B, H, Sq, D], k/v [B, H, Sk, D], keyMask [B, Sk]
    /// (nonzero = attend) -> out [B, H, Sq, D] and lse [B, H, Sq] (natural log-sum-exp of the
    /// scaled scores, -inf for a row with every key masked). Building block of custom attention
    /// ops (ring attention merges per-block (out, lse) pairs).
    public static func forward(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor?, scale sc: Float,
                               causalBlock: Int = 0) -> (out: Tensor, lse: Tensor) {
        forward(q: q, k: k, v: v, keyMask: keyMask, scale: sc, causalBlock: causalBlock, probs: nil)
    }

    /// `probs` (from `probabilityBuffer`) receives the probabilities when each thread has whole
    /// heads (`probabilityBuffer` returns one only then); the recorded op's backward reads them.
    static func forward(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor?, scale sc: Float,
                        causalBlock: Int, probs: Tensor?) -> (out: Tensor, lse: Tensor) {
        let B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3], Sk = k.shape[2]
        precondition(k.shape == [B, H, Sk, D] && v.shape == [B, H, Sk, D], "attention: k \(k.shape), v \(v.shape) for q \(q.shape)")
        if let keyMask { precondition(keyMask.shape == [B, Sk], "attention: keyMask \(keyMask.shape), expected [\(B), \(Sk)]") }
        precondition(causalBlock == 0 || Sq == Sk, "causal attention needs as many queries as keys")
        let qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous()
        let mc = keyMask?.contiguous()
        let out = Tensor(uninitialized: [B, H, Sq, D])
        let lse = Tensor(uninitialized: [B, H, Sq])
        let threads = FlashAttention.threads
        let heads = B * H
        let splits = heads >= threads ? 1 : (threads + heads - 1) / heads
        let ptr = SendablePointers(q: qc.pointer, k: kc.pointer, v: vc.pointer, out: out.pointer, lse: lse.pointer, mask: mc?.pointer)
        let qSplit = (Sq + splits - 1) / splits
        if let probs, splits == 1 {
            let pp = UncheckedSendable(probs.pointer), kp = Int(hv_attention_probs_stride(Int32(Sk)))
            precondition(probs.count >= heads * Sq * kp, "attention: probability buffer of \(probs.count) floats for \(heads * Sq * kp)")
            parallelFor(heads, threads: threads) { i in
                let ran = hv_attention_forward_head_probs(ptr.q + i * Sq * D, ptr.k + i * Sk * D, ptr.v + i * Sk * D,
                                                          ptr.mask.map { UnsafePointer($0 + (i / H) * Sk) }, Int32(Sq), Int32(Sk), Int32(D), sc,
                                                          ptr.out + i * Sq * D, ptr.lse + i * Sq, Int32(causalBlock), pp.value + i * Sq * kp)
                precondition(ran != 0, "fused attention kernel could not run (out of memory for its packed keys and values)")
            }
            withExtendedLifetime((qc, kc, vc, mc, probs)) {}
            return (out, lse)
        }
        parallelFor(heads * splits, threads: threads) { item in
            let i = item / splits, part = item % splits
            let b = i / H
            let r0 = min(Sq, part * qSplit), r1 = min(Sq, r0 + qSplit)
            if r1 <= r0 { return }
            FlashAttention.forwardHead(q: ptr.q + i * Sq * D + r0 * D, k: ptr.k + i * Sk * D, v: ptr.v + i * Sk * D,
                                       keyMask: ptr.mask.map { UnsafePointer($0 + b * Sk) }, sq: r1 - r0, sk: Sk, d: D, scale: sc,
                                       out: ptr.out + i * Sq * D + r0 * D, lse: ptr.lse + i * Sq + r0,
                                       causalBlock: causalBlock, rowOffset: r0)
        }
        withExtendedLifetime((qc, kc, vc, mc)) {}
        return (out, lse)
    }

    /// Gradients of the keys k/v (a block of, or all of, the keys the queries attended) given
    /// `out` and `lse` of the whole attention and dout [B, H, Sq, D]: returns dq (this block's
    /// contribution), dk, dv. With the full softmax's out/lse the per-block results add up to
    /// the gradients of the full attention.
    public static func backward(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor?, out: Tensor, lse: Tensor, dout: Tensor,
                                scale sc: Float, causalBlock: Int = 0) -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        backward(q: q, k: k, v: v, keyMask: keyMask, out: out, lse: lse, dout: dout, scale: sc, causalBlock: causalBlock, probs: nil)
    }

    /// `probs`: the probabilities `forward` kept, read instead of recomputed when each thread
    /// has whole heads (as it had in that forward, which wrote them; otherwise ignored).
    static func backward(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor?, out: Tensor, lse: Tensor, dout: Tensor,
                         scale sc: Float, causalBlock: Int, probs: Tensor?) -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        let B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3], Sk = k.shape[2]
        let qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), oc = out.contiguous(), lc = lse.contiguous()
        let mc = keyMask?.contiguous()
        let gc = dout.contiguous()
        let threads = FlashAttention.threads
        let heads = B * H
        let splits = heads >= threads ? 1 : (threads + heads - 1) / heads
        let dq = Tensor(uninitialized: qc.shape), dk = Tensor(uninitialized: kc.shape), dv = Tensor(uninitialized: vc.shape)
        let kSplit = (Sk + splits - 1) / splits
        let partials: UnsafeMutablePointer<Float>? = splits > 1 ? .allocate(capacity: heads * splits * Sq * D) : nil
        defer { partials?.deallocate() }
        var p = SendablePointers(q: qc.pointer, k: kc.pointer, v: vc.pointer, out: oc.pointer, lse: lc.pointer, mask: mc?.pointer)
        p.g = gc.pointer; p.dq = dq.pointer; p.dk = dk.pointer; p.dv = dv.pointer; p.dqPartials = partials
        let bp = p
        if let probs, splits == 1 {
            let pp = UncheckedSendable(UnsafePointer(probs.pointer)), kp = Int(hv_attention_probs_stride(Int32(Sk)))
            precondition(probs.count >= heads * Sq * kp, "attention: probability buffer of \(probs.count) floats for \(heads * Sq * kp)")
            parallelFor(heads, threads: threads) { i in
                let ran = hv_attention_backward_head_probs(
                    bp.q + i * Sq * D, bp.k + i * Sk * D, bp.v + i * Sk * D, bp.mask.map { UnsafePointer($0 + (i / H) * Sk) },
                    bp.out + i * Sq * D, pp.value + i * Sq * kp, bp.g! + i * Sq * D, Int32(Sq), Int32(Sk), Int32(D), sc,
                    bp.dq! + i * Sq * D, bp.dk! + i * Sk * D, bp.dv! + i * Sk * D, Int32(causalBlock))
                precondition(ran != 0, "fused attention backward could not run (out of memory for its packed keys and values)")
            }
            withExtendedLifetime((qc, kc, vc, oc, lc, mc, gc)) {}
            return (dq, dk, dv)
        }
        parallelFor(heads * splits, threads: threads) { item in
            let i = item / splits, part = item % splits
            let b = i / H
            let k0 = min(Sk, part * kSplit), k1 = min(Sk, k0 + kSplit)
            let dqOut = bp.dqPartials.map { $0 + item * Sq * D } ?? (bp.dq! + i * Sq * D)
            if k1 <= k0 { dqOut.update(repeating: 0, count: Sq * D); return }
            FlashAttention.backwardHead(
                q: bp.q + i * Sq * D, k: bp.k + i * Sk * D + k0 * D, v: bp.v + i * Sk * D + k0 * D,
                keyMask: bp.mask.map { UnsafePointer($0 + b * Sk + k0) }, out: bp.out + i * Sq * D, lse: bp.lse + i * Sq,
                dout: bp.g! + i * Sq * D, sq: Sq, sk: k1 - k0, d: D, scale: sc,
                dq: dqOut, dk: bp.dk! + i * Sk * D + k0 * D, dv: bp.dv! + i * Sk * D + k0 * D,
                causalBlock: causalBlock, colOffset: k0)
        }
        if let partials {
            for i in 0..<heads {
                let dst = dq.pointer + i * Sq * D
                dst.update(from: partials + i * splits * Sq * D, count: Sq * D)
                for part in 1..<splits {
                    let src = partials + (i * splits + part) * Sq * D
                    for j in 0..<(Sq * D) { dst[j] += src[j] }
                }
            }
        }
        withExtendedLifetime((qc, kc, vc, oc, lc, mc, gc)) {}
        return (dq, dk, dv)
    }
}

extension FlashAttention {
    /// Adds the keys k/v [B, H, Sk, D] (keyMask [B, Sk] or nil) to an attention in progress:
    /// out [B, H, Sq, D] and lse [B, H, Sq] hold the normalised output and log-sum-exp over the
    /// keys seen so far (out 0 and lse -inf: none) and are updated in place to cover k/v as
    /// well — equal, up to rounding, to one `forward` over both key sets. All contiguous.
    public static func forwardAccumulating(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor?, scale sc: Float,
                                           out: Tensor, lse: Tensor) {
        let B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3], Sk = k.shape[2]
        precondition(k.shape == [B, H, Sk, D] && v.shape == k.shape && out.shape == q.shape && lse.shape == [B, H, Sq],
                     "attention: q \(q.shape), k \(k.shape), v \(v.shape), out \(out.shape), lse \(lse.shape)")
        precondition([q, k, v, out, lse].allSatisfy(\.isContiguous) && (keyMask?.isContiguous ?? true), "forwardAccumulating needs contiguous tensors")
        if Sk == 0 || Sq == 0 { return }
        let threads = FlashAttention.threads
        let heads = B * H
        let splits = heads >= threads ? 1 : (threads + heads - 1) / heads
        let ptr = SendablePointers(q: q.pointer, k: k.pointer, v: v.pointer, out: out.pointer, lse: lse.pointer, mask: keyMask?.pointer)
        let qSplit = (Sq + splits - 1) / splits
        parallelFor(heads * splits, threads: threads) { item in
            let i = item / splits, part = item % splits
            let b = i / H
            let r0 = min(Sq, part * qSplit), r1 = min(Sq, r0 + qSplit)
            if r1 <= r0 { return }
            FlashAttention.forwardHead(q: ptr.q + i * Sq * D + r0 * D, k: ptr.k + i * Sk * D, v: ptr.v + i * Sk * D,
                                       keyMask: ptr.mask.map { UnsafePointer($0 + b * Sk) }, sq: r1 - r0, sk: Sk, d: D, scale: sc,
                                       out: ptr.out + i * Sq * D + r0 * D, lse: ptr.lse + i * Sq + r0, accumulate: true)
        }
        withExtendedLifetime((q, k, v, out, lse, keyMask)) {}
    }

    /// `backward` that adds into the caller's gradients instead of returning fresh ones:
    /// dq [B, H, Sq, D] += this key block's share, dk/dv [B, H, Sk, D] += the block's gradients.
    /// `out`/`lse` are those of the whole attention. All contiguous. When there are fewer heads
    /// than threads, the work is split along whichever axis needs the smaller partial buffers
    /// (keys: dQ partials; queries: dK/dV partials).
    public static func backwardAccumulating(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor?, out: Tensor, lse: Tensor, dout: Tensor,
                                            scale sc: Float, dq: Tensor, dk: Tensor, dv: Tensor) {
        let B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3], Sk = k.shape[2]
        precondition(k.shape == [B, H, Sk, D] && v.shape == k.shape && out.shape == q.shape && dout.shape == q.shape && lse.shape == [B, H, Sq]
                     && dq.shape == q.shape && dk.shape == k.shape && dv.shape == k.shape,
                     "attention backward: q \(q.shape), k \(k.shape), dq \(dq.shape), dk \(dk.shape), dv \(dv.shape)")
        precondition([q, k, v, out, lse, dout, dq, dk, dv].allSatisfy(\.isContiguous) && (keyMask?.isContiguous ?? true),
                     "backwardAccumulating needs contiguous tensors")
        if Sk == 0 || Sq == 0 { return }
        let threads = FlashAttention.threads
        let heads = B * H
        let splits = heads >= threads ? 1 : (threads + heads - 1) / heads
        // Split keys (dQ partials of splits x Sq) or queries (dK|dV partials of splits x 2 Sk).
        let splitKeys = Sq <= 2 * Sk
        let partialCount = splits == 1 ? 0 : (splitKeys ? Sq * D : 2 * Sk * D)
        let partials: UnsafeMutablePointer<Float>? = splits > 1 ? .allocate(capacity: heads * splits * partialCount) : nil
        defer { partials?.deallocate() }
        var p = SendablePointers(q: q.pointer, k: k.pointer, v: v.pointer, out: out.pointer, lse: lse.pointer, mask: keyMask?.pointer)
        p.g = dout.pointer; p.dq = dq.pointer; p.dk = dk.pointer; p.dv = dv.pointer; p.dqPartials = partials
        let bp = p
        let kSplit = (Sk + splits - 1) / splits, qSplit = (Sq + splits - 1) / splits
        parallelFor(heads * splits, threads: threads) { item in
            let i = item / splits, part = item % splits
            let mask = bp.mask.map { UnsafePointer($0 + (i / H) * Sk) }
            let q = bp.q + i * Sq * D, k = bp.k + i * Sk * D, v = bp.v + i * Sk * D, o = bp.out + i * Sq * D, g = bp.g! + i * Sq * D
            let dq = bp.dq! + i * Sq * D, dk = bp.dk! + i * Sk * D, dv = bp.dv! + i * Sk * D, l = bp.lse + i * Sq
            if splits == 1 {
                FlashAttention.backwardHead(q: q, k: k, v: v, keyMask: mask, out: o, lse: l, dout: g, sq: Sq, sk: Sk, d: D, scale: sc,
                                            dq: dq, dk: dk, dv: dv, accumulateDQ: true, accumulateDKV: true)
            } else if splitKeys {
                let dqPart = bp.dqPartials! + item * partialCount
                let k0 = min(Sk, part * kSplit), k1 = min(Sk, k0 + kSplit)
                if k1 <= k0 { dqPart.update(repeating: 0, count: Sq * D); return }
                FlashAttention.backwardHead(q: q, k: k + k0 * D, v: v + k0 * D, keyMask: mask.map { $0 + k0 }, out: o, lse: l, dout: g,
                                            sq: Sq, sk: k1 - k0, d: D, scale: sc, dq: dqPart, dk: dk + k0 * D, dv: dv + k0 * D,
                                            accumulateDKV: true)
            } else {
                let dkPart = bp.dqPartials! + item * partialCount, dvPart = dkPart + Sk * D
                let r0 = min(Sq, part * qSplit), r1 = min(Sq, r0 + qSplit)
                if r1 <= r0 { dkPart.update(repeating: 0, count: 2 * Sk * D); return }
                FlashAttention.backwardHead(q: q + r0 * D, k: k, v: v, keyMask: mask, out: o + r0 * D, lse: l + r0, dout: g + r0 * D,
                                            sq: r1 - r0, sk: Sk, d: D, scale: sc, dq: dq + r0 * D, dk: dkPart, dv: dvPart,
                                            accumulateDQ: true)
            }
        }
        if let partials {
            for i in 0..<heads {
                for part in 0..<splits {
                    let src = partials + (i * splits + part) * partialCount
                    if splitKeys {
                        let dst = dq.pointer + i * Sq * D
                        for j in 0..<(Sq * D) { dst[j] += src[j] }
                    } else {
                        let dkDst = dk.pointer + i * Sk * D, dvDst = dv.pointer + i * Sk * D
                        for j in 0..<(Sk * D) { dkDst[j] += src[j]; dvDst[j] += src[Sk * D + j] }
                    }
                }
            }
        }
        withExtendedLifetime((q, k, v, out, lse, dout, dq, dk, dv, keyMask)) {}
    }
}
