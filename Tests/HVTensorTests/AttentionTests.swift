import HVTensor
import XCTest
import _HVTestSupport

/// Blocked attention vs the naive softmax(QK^T/sqrt(d) + mask) V written with primitive ops.
final class AttentionTests: XCTestCase {
    func naive(_ q: Tensor, _ k: Tensor, _ v: Tensor, mask: Tensor?) -> Tensor {
        let d = Float(q.shape[3])
        var s = q.matmul(k.transpose(2, 3)) * (1 / d.squareRoot())
        if let mask {
            let B = mask.shape[0], Sk = mask.shape[1]
            let bias = Tensor(mask.scalars.map { $0 != 0 ? 0 : -1e9 }, shape: [B, 1, 1, Sk])
            s = s + bias
        }
        return s.softmax(axis: -1).matmul(v)
    }

    /// Runs `body` on each path: the fused kernel keeping the probabilities for the backward,
    /// the fused kernel recomputing them (no budget), and the blocked sgemm path; D a multiple of
    /// 16 takes the fused path when it is on (and keeps probabilities when each thread has whole
    /// heads).
    func eachPath(_ body: (String) -> Void) {
        let (budget, threads) = (FlashAttention.probabilityBudget, FlashAttention.threads)
        defer { FlashAttention.fused = true; FlashAttention.probabilityBudget = budget; FlashAttention.threads = threads }
        // Two threads, so that the tests' 2 to 6 heads give every thread whole heads (the kept
        // path) whatever this machine's core count.
        FlashAttention.threads = 2
        for (fused, keep, name) in [(true, true, "fused, probabilities kept"), (true, false, "fused, recomputed"), (false, false, "blocked")] {
            FlashAttention.fused = fused
            FlashAttention.probabilityBudget = keep ? budget : 0
            body(name)
        }
    }

    func compare(blockQ: Int, blockK: Int, sq: Int, sk: Int, masked: Bool, d: Int = 16, heads: Int = 3) {
        eachPath { fused in compare(blockQ: blockQ, blockK: blockK, sq: sq, sk: sk, masked: masked, d: d, heads: heads, fused: fused) }
    }

    func compare(blockQ: Int, blockK: Int, sq: Int, sk: Int, masked: Bool, d: Int, heads: Int, fused: String) {
        FlashAttention.blockQ = blockQ; FlashAttention.blockK = blockK
        defer { FlashAttention.blockQ = 256; FlashAttention.blockK = 256 }
        let q = randomTensor([2, heads, sq, d], seed: 1), k = randomTensor([2, heads, sk, d], seed: 2), v = randomTensor([2, heads, sk, d], seed: 3)
        var m: [Float] = []
        for b in 0..<2 { for j in 0..<sk { m.append(masked && (j % 3 == 1 || (b == 1 && j >= sk / 2)) ? 0 : 1) } }
        let mask = masked ? Tensor(m, shape: [2, sk]) : nil
        let g = randomTensor([2, heads, sq, d], seed: 4)
        for t in [q, k, v] { t.requiresGrad = true }
        let fast = Tensor.scaledDotProductAttention(q, k, v, keyMask: mask)
        (fast * g).sum().backward()
        let grads = [q, k, v].map { $0.grad! }
        for t in [q, k, v] { t.zeroGrad() }
        let ref = naive(q, k, v, mask: mask)
        (ref * g).sum().backward()
        let what = "bq \(blockQ), bk \(blockK), sq \(sq), sk \(sk), d \(d), masked \(masked), \(fused)"
        XCTAssertLessThan(maxAbsDiff(fast, ref), 2e-5, "forward (\(what))")
        for (i, t) in [q, k, v].enumerated() {
            XCTAssertLessThan(maxAbsDiff(grads[i], t.grad!), 5e-5, "grad \(["q", "k", "v"][i]) (\(what))")
        }
    }

    /// Frame-causal attention (the VAE mid block): equals the naive version with a block-causal
    /// bias, forward and backward, across block boundaries and thread splits.
    func testFrameCausalMatchesNaive() {
        for (S, frame, D) in [(30, 6, 8), (30, 6, 16), (110, 10, 32)] {
            eachPath { fused in frameCausal(S: S, frame: frame, D: D, fused: fused) }
        }
    }

    func frameCausal(S: Int, frame: Int, D: Int, fused: String) {
        for (bq, bk, threads) in [(4, 8, 1), (8, 4, 2), (256, 256, 2)] {
            FlashAttention.blockQ = bq; FlashAttention.blockK = bk
            let savedThreads = FlashAttention.threads
            FlashAttention.threads = threads
            defer { FlashAttention.blockQ = 256; FlashAttention.blockK = 256; FlashAttention.threads = savedThreads }
            let q = randomTensor([1, 1, S, D], seed: 21), k = randomTensor([1, 1, S, D], seed: 22), v = randomTensor([1, 1, S, D], seed: 23)
            let g = randomTensor([1, 1, S, D], seed: 24)
            for t in [q, k, v] { t.requiresGrad = true; t.zeroGrad() }
            let fast = Tensor.scaledDotProductAttention(q, k, v, causalBlock: frame)
            (fast * g).sum().backward()
            let grads = [q, k, v].map { $0.grad! }
            for t in [q, k, v] { t.zeroGrad() }
            var bias = [Float](repeating: 0, count: S * S)
            for i in 0..<S { for j in 0..<S where j >= (i / frame + 1) * frame { bias[i * S + j] = -1e9 } }
            let ref = (q.matmul(k.transpose(2, 3)) * (1 / Float(D).squareRoot()) + Tensor(bias, shape: [1, 1, S, S])).softmax().matmul(v)
            (ref * g).sum().backward()
            let what = "S \(S) frame \(frame) D \(D) bq \(bq) bk \(bk) threads \(threads), \(fused)"
            XCTAssertLessThan(maxAbsDiff(fast, ref), 2e-5, "forward \(what)")
            for (i, t) in [q, k, v].enumerated() { XCTAssertLessThan(maxAbsDiff(grads[i], t.grad!), 5e-5, "grad \(i) \(what)") }
        }
    }

    /// The probabilities are kept exactly when the fused kernel runs, every thread has whole
    /// heads and they fit the budget (so `eachPath` really runs the kept path in the tests above).
    func testProbabilitiesAreKeptWithinTheBudget() {
        let (saved, budget) = (FlashAttention.threads, FlashAttention.probabilityBudget)
        defer { FlashAttention.threads = saved; FlashAttention.probabilityBudget = budget }
        FlashAttention.threads = 2
        XCTAssertEqual(FlashAttention.probabilityBuffer([2, 3, 37, 16], keys: 29)?.count, 6 * 37 * 48)
        XCTAssertNil(FlashAttention.probabilityBuffer([1, 1, 37, 16], keys: 29), "one head on two threads splits it")
        XCTAssertNil(FlashAttention.probabilityBuffer([2, 3, 37, 8], keys: 29), "D = 8 takes the blocked path")
        FlashAttention.probabilityBudget = 6 * 37 * 48 * 4 - 1
        XCTAssertNil(FlashAttention.probabilityBuffer([2, 3, 37, 16], keys: 29), "over the budget")
    }

    /// Kept probabilities live in buffers that malloc hands out again to later attentions of the
    /// same size, whatever those compute: causal after masked after causal, each equal to the
    /// naive attention (nothing read that the forward did not write).
    func testReusedProbabilityBuffersHoldNothingStale() {
        let threads = FlashAttention.threads
        defer { FlashAttention.threads = threads }
        FlashAttention.threads = 2
        let S = 60, D = 16, frame = 12
        XCTAssertNotNil(FlashAttention.probabilityBuffer([1, 2, S, D], keys: S))
        for (round, causal) in [true, false, true].enumerated() {
            let q = randomTensor([1, 2, S, D], seed: 60 + UInt64(round)), k = randomTensor([1, 2, S, D], seed: 70 + UInt64(round))
            let v = randomTensor([1, 2, S, D], seed: 80 + UInt64(round)), g = randomTensor([1, 2, S, D], seed: 90 + UInt64(round))
            let mask = causal ? nil : Tensor((0..<S).map { $0 % 5 == 2 ? 0 : 1 }, shape: [1, S])
            for t in [q, k, v] { t.requiresGrad = true }
            let out = Tensor.scaledDotProductAttention(q, k, v, keyMask: mask, causalBlock: causal ? frame : 0)
            (out * g).sum().backward()
            let grads = [q, k, v].map { $0.grad!.copy() }
            for t in [q, k, v] { t.zeroGrad() }
            var bias = [Float](repeating: 0, count: S * S)
            for i in 0..<S {
                for j in 0..<S where (causal && j >= (i / frame + 1) * frame) || (!causal && j % 5 == 2) { bias[i * S + j] = -1e9 }
            }
            let ref = (q.matmul(k.transpose(2, 3)) * (1 / Float(D).squareRoot()) + Tensor(bias, shape: [1, 1, S, S])).softmax().matmul(v)
            (ref * g).sum().backward()
            XCTAssertLessThan(maxAbsDiff(out, ref), 2e-5, "forward, round \(round)")
            for i in 0..<3 { XCTAssertLessThan(maxAbsDiff(grads[i], [q, k, v][i].grad!), 5e-5, "grad \(i), round \(round)") }
        }
    }

    func testMatchesNaiveUnmasked() { compare(blockQ: 16, blockK: 8, sq: 37, sk: 29, masked: false) }
    /// Every key attended and none padded (48 keys): the kernel adds no bias at all.
    func testMatchesNaiveUnmaskedWithoutPadding() { compare(blockQ: 16, blockK: 8, sq: 37, sk: 48, masked: false) }
    func testMatchesNaiveMasked() { compare(blockQ: 8, blockK: 16, sq: 40, sk: 45, masked: true) }
    func testMatchesNaiveSingleBlock() { compare(blockQ: 256, blockK: 256, sq: 33, sk: 50, masked: true) }
    /// The DiT's head size (64) at sizes around the fused kernel's 6-row strips, 16-key panels and
    /// 48-row backward blocks (1 query, 1 key, 97 queries over 131 keys, ...).
    func testMatchesNaiveAtHeadSize64() {
        for (sq, sk) in [(1, 1), (7, 5), (97, 131), (131, 97), (48, 48)] {
            compare(blockQ: 32, blockK: 64, sq: sq, sk: sk, masked: sq > 1, d: 64, heads: 1)
        }
    }
    /// One head on two threads: the forward splits the queries and the backward the keys (dQ
    /// partials summed afterwards), on both paths.
    func testThreadSplitsMatchNaive() {
        let saved = FlashAttention.threads
        FlashAttention.threads = 2
        defer { FlashAttention.threads = saved }
        let q = randomTensor([1, 1, 101, 32], seed: 41), k = randomTensor([1, 1, 75, 32], seed: 42), v = randomTensor([1, 1, 75, 32], seed: 43)
        let g = randomTensor([1, 1, 101, 32], seed: 44)
        let mask = Tensor((0..<75).map { $0 % 4 == 3 ? 0 : 1 }, shape: [1, 75])
        for t in [q, k, v] { t.requiresGrad = true }
        let ref = naive(q, k, v, mask: mask)
        (ref * g).sum().backward()
        let refGrads = [q, k, v].map { $0.grad!.copy() }
        eachPath { fused in
            for t in [q, k, v] { t.zeroGrad() }
            let out = Tensor.scaledDotProductAttention(q, k, v, keyMask: mask)
            (out * g).sum().backward()
            XCTAssertLessThan(maxAbsDiff(out, ref), 2e-5, "forward, \(fused)")
            for i in 0..<3 { XCTAssertLessThan(maxAbsDiff([q, k, v][i].grad!, refGrads[i]), 5e-5, "grad \(i), \(fused)") }
        }
    }

    /// A row whose keys are all masked gives zeros and finite gradients (guards the online softmax).
    /// Without a graph the fused kernel reads heads where they lie and writes [B, S, heads, D]:
    /// q and k as [B, S, heads, D] tensors transposed to [B, heads, S, D], v a chunk of a fused
    /// [B, S, 2, heads, D] tensor (rows 2 x heads x D apart), with a key mask. Equal to the
    /// recorded path (contiguous copies) bit for bit, and to the naive attention.
    func testNoGradAttentionReadsStridedHeadsInPlace() {
        let B = 2, S = 37, H = 3, D = 32
        let q = randomTensor([B, S, H, D], seed: 40), k = randomTensor([B, S, H, D], seed: 41)
        let kv = randomTensor([B, S, 2, H, D], seed: 42)
        let v = kv.chunk(2, axis: 2)[1].squeeze(2)
        var maskValues = [Float](repeating: 1, count: B * S)
        for j in [3, 20, 36] { maskValues[S + j] = 0 }
        let mask = Tensor(maskValues, shape: [B, S])
        let (qt, kt, vt) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        let inPlace = Tensor.scaledDotProductAttention(qt, kt, vt, keyMask: mask)
        XCTAssertEqual(inPlace.transpose(1, 2).isContiguous, true, "output not written as [B, S, heads, D]")
        let qr = qt.copy()
        qr.requiresGrad = true
        let recorded = Tensor.scaledDotProductAttention(qr, kt, vt, keyMask: mask)
        XCTAssertEqual(inPlace.contiguous().scalars, recorded.contiguous().scalars)
        XCTAssertLessThan(maxAbsDiff(inPlace.contiguous(), naive(qt.contiguous(), kt.contiguous(), vt.contiguous(), mask: mask)), 1e-5)
    }

    func testFullyMaskedRowsAreZero() {
        for d in [4, 16] {  // the blocked path and the fused kernel
            let q = randomTensor([1, 1, 3, d], seed: 5), k = randomTensor([1, 1, 4, d], seed: 6), v = randomTensor([1, 1, 4, d], seed: 7)
            for t in [q, k, v] { t.requiresGrad = true }
            let out = Tensor.scaledDotProductAttention(q, k, v, keyMask: Tensor(zeros: [1, 4]))
            XCTAssertEqual(out.scalars, [Float](repeating: 0, count: 3 * d), "d \(d)")
            out.sum().backward()
            for t in [q, k, v] { XCTAssert(t.grad!.scalars.allSatisfy { $0 == 0 }, "d \(d)") }
        }
    }

    /// 16k tokens forward + backward without an S x S matrix (which alone would be 1 GiB).
    func testLongSequenceMemoryIsLinear() {
        let S = 16_384, D = 16
        let q = randomTensor([1, 1, S, D], seed: 8, std: 0.1), k = randomTensor([1, 1, S, D], seed: 9, std: 0.1)
        let v = randomTensor([1, 1, S, D], seed: 10)
        for t in [q, k, v] { t.requiresGrad = true }
        let before = peakRSSBytes()
        let out = Tensor.scaledDotProductAttention(q, k, v)
        out.sum().backward()
        let grown = peakRSSBytes() - before
        XCTAssertLessThan(grown, 256 << 20, "peak memory grew by \(grown >> 20) MiB for S = 16k")
        XCTAssert(q.grad!.scalars.allSatisfy { $0.isFinite })
    }

    /// forwardAccumulating / backwardAccumulating over keys cut into pieces (ring attention's
    /// chunks; the first piece masked, one piece fully masked) equal one forward / backward over
    /// all keys. Run with 1 and 4 threads: with B·H = 1 < threads the backward splits keys (dQ
    /// partials) when Sq <= 2 Sk, else queries (dK|dV partials).
    func testAccumulatingOverKeyPiecesEqualsWholeAttention() {
        let savedThreads = FlashAttention.threads
        defer { FlashAttention.threads = savedThreads; FlashAttention.blockQ = 256; FlashAttention.blockK = 256 }
        FlashAttention.blockQ = 8; FlashAttention.blockK = 4
        // D 8 runs the blocked path; D 16 the fused kernel's backward with accumulateDQ/DKV.
        for (B, H, Sq, pieces) in [(2, 2, 19, [7, 5, 1, 9]), (1, 1, 23, [3, 2, 4]), (1, 1, 5, [11, 6])] {
            for (threads, D) in [(1, 8), (4, 8), (1, 16), (4, 16)] {
                FlashAttention.threads = threads
                let Sk = pieces.reduce(0, +)
                let q = randomTensor([B, H, Sq, D], seed: 31), k = randomTensor([B, H, Sk, D], seed: 32)
                let v = randomTensor([B, H, Sk, D], seed: 33), g = randomTensor([B, H, Sq, D], seed: 34)
                // Piece 0 has key 1 masked in every batch; piece 2 (if any) is masked entirely.
                let maskRows = (0..<B).map { _ in (0..<Sk).map { j -> Float in
                    j == 1 || (pieces.count > 2 && j >= pieces[0] + pieces[1] && j < pieces[0] + pieces[1] + pieces[2]) ? 0 : 1 } }
                let mask = Tensor(maskRows.flatMap { $0 }, shape: [B, Sk])
                let (refOut, refLSE) = FlashAttention.forward(q: q, k: k, v: v, keyMask: mask, scale: 0.3)
                let (refDQ, refDK, refDV) = FlashAttention.backward(q: q, k: k, v: v, keyMask: mask, out: refOut, lse: refLSE, dout: g, scale: 0.3)

                let out = Tensor(zeros: [B, H, Sq, D]), lse = Tensor(repeating: -.infinity, shape: [B, H, Sq])
                let dq = randomTensor([B, H, Sq, D], seed: 35), dq0 = dq.copy()
                var dks: [Tensor] = [], dvs: [Tensor] = [], start = 0
                var parts: [(Tensor, Tensor, Tensor)] = []
                for n in pieces {
                    let kp = k.slice(axis: 2, start: start, length: n).contiguous(), vp = v.slice(axis: 2, start: start, length: n).contiguous()
                    let mp = mask.slice(axis: 1, start: start, length: n).contiguous()
                    parts.append((kp, vp, mp))
                    FlashAttention.forwardAccumulating(q: q, k: kp, v: vp, keyMask: mp, scale: 0.3, out: out, lse: lse)
                    start += n
                }
                XCTAssertLessThan(maxAbsDiff(out, refOut), 1e-5, "out B\(B) H\(H) Sq \(Sq) D \(D) threads \(threads)")
                XCTAssertLessThan(maxAbsDiff(lse, refLSE), 1e-5, "lse B\(B) H\(H) Sq \(Sq) D \(D) threads \(threads)")
                for (kp, vp, mp) in parts {
                    // dK|dV start from ones: the op adds to them.
                    let dk = Tensor(repeating: 1, shape: kp.shape), dv = Tensor(repeating: 1, shape: vp.shape)
                    FlashAttention.backwardAccumulating(q: q, k: kp, v: vp, keyMask: mp, out: refOut, lse: refLSE, dout: g, scale: 0.3,
                                                        dq: dq, dk: dk, dv: dv)
                    dks.append(dk - Tensor(repeating: 1, shape: kp.shape)); dvs.append(dv - Tensor(repeating: 1, shape: vp.shape))
                }
                XCTAssertLessThan(maxAbsDiff(dq - dq0, refDQ), 1e-5, "dq B\(B) H\(H) Sq \(Sq) D \(D) threads \(threads)")
                XCTAssertLessThan(maxAbsDiff(Tensor.concat(dks, axis: 2), refDK), 1e-5, "dk B\(B) H\(H) Sq \(Sq) D \(D) threads \(threads)")
                XCTAssertLessThan(maxAbsDiff(Tensor.concat(dvs, axis: 2), refDV), 1e-5, "dv B\(B) H\(H) Sq \(Sq) D \(D) threads \(threads)")
            }
        }
    }
}
