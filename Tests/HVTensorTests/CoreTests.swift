import CHVKernels
import Foundation
import HVTensor
import XCTest
import _HVTestSupport

final class CoreTests: XCTestCase {
    /// Sums over the last axis (a vectorised row sum) and over outer/middle axes agree with a
    /// Double reference, for rows around the row sum's 32-lane blocks.
    func testSumsOverAxesMatchReference() {
        for (outer, mid, n) in [(1, 1, 1), (2, 3, 31), (3, 2, 32), (2, 5, 33), (4, 3, 100), (2, 32, 1000)] {
            let values = (0..<(outer * mid * n)).map { Float(sin(Double($0) * 0.37)) + 0.25 }
            let x = Tensor(values, shape: [outer, mid, n])
            func ref(_ keep: (Int, Int, Int) -> Int, count: Int) -> [Double] {
                var r = [Double](repeating: 0, count: count)
                for a in 0..<outer { for b in 0..<mid { for c in 0..<n { r[keep(a, b, c)] += Double(values[(a * mid + b) * n + c]) } } }
                return r
            }
            for (axes, expected) in [([2], ref({ a, b, _ in a * mid + b }, count: outer * mid)),
                                     ([0, 2], ref({ _, b, _ in b }, count: mid)),
                                     ([0, 1], ref({ _, _, c in c }, count: n))] {
                let got = x.sum(axes: axes).scalars
                XCTAssertEqual(got.count, expected.count)
                for (g, e) in zip(got, expected) {
                    XCTAssertEqual(Double(g), e, accuracy: 1e-5 * Swift.max(1, abs(e)) * Double(outer * mid * n).squareRoot(), "axes \(axes) shape \([outer, mid, n])")
                }
            }
        }
    }

    /// Column sums (bias gradients) add each column's rows in order: equal to a sequential sum,
    /// for widths around the kernel's 64-column blocks.
    func testColumnSumsAddRowsInOrder() {
        for (rows, cols) in [(37, 150), (1, 64), (5, 63), (300, 129)] {
            let values = (0..<(rows * cols)).map { Float(sin(Double($0) * 0.71)) * 1000 + 0.1 }
            let got = Tensor(values, shape: [rows, cols]).sum(axes: [0]).scalars
            XCTAssertEqual(got.count, cols)
            for c in 0..<cols {
                var s: Float = 0
                for r in 0..<rows { s += values[r * cols + c] }
                XCTAssertEqual(got[c], s, "column \(c) of \([rows, cols])")
            }
        }
    }

    func testSgemmMatchesNaiveMatmul() {
        let a = randomTensor([37, 53], seed: 1), b = randomTensor([53, 29], seed: 2)
        let c = a.matmul(b)
        let av = a.scalars, bv = b.scalars, cv = c.scalars
        var worst = 0.0
        for i in 0..<37 { for j in 0..<29 {
            var s = 0.0
            for k in 0..<53 { s += Double(av[i * 53 + k]) * Double(bv[k * 29 + j]) }
            worst = max(worst, abs(s - Double(cv[i * 29 + j])))
        }}
        XCTAssertLessThan(worst, 1e-4)
    }

    func testViewsShareStorageAndCopyWhenStrided() {
        let a = Tensor((0..<24).map(Float.init), shape: [2, 3, 4])
        let r = a.reshape([6, 4])
        XCTAssert(r.storage === a.storage)
        let t = a.transpose(1, 2)
        XCTAssert(t.storage === a.storage)
        XCTAssertFalse(t.isContiguous)
        XCTAssertEqual(t.shape, [2, 4, 3])
        XCTAssertEqual(Array(t.scalars.prefix(6)), [0, 4, 8, 1, 5, 9])
        let s = a.slice(axis: 2, start: 1, length: 2)
        XCTAssertEqual(s.scalars, [1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22])
        XCTAssertEqual(a.permute([2, 0, 1]).shape, [4, 2, 3])
        XCTAssertEqual(a.permute([2, 0, 1]).scalars[1], 4)
        let chunks = a.chunk(2, axis: 0)
        XCTAssertEqual(chunks[1].scalars.first, 12)
        XCTAssertEqual(Tensor.concat(chunks, axis: 0).scalars, a.scalars)
    }

    /// Elementwise ops, copies, norms and reductions split over threads (`Parallel`) give the
    /// same bits as on one thread, forward and backward, including uneven splits (3 threads) and
    /// broadcast, permuted and sliced operands. grain 1 forces the split on these small shapes.
    func testThreadedElementwiseOpsEqualSerial() {
        func leaf(_ shape: [Int], _ seed: UInt64) -> Tensor {
            let t = randomTensor(shape, seed: seed)
            t.requiresGrad = true
            return t
        }
        func run() -> [[Float]] {
            let x = leaf([4, 5, 6], 11), y = leaf([5, 6], 12), z = leaf([4, 1, 6], 13), w = leaf([6], 14), b = leaf([6], 15)
            let h = (x * y + z) / (y.square() + 1)
            let p = h.permute([2, 0, 1]).contiguous().gelu().permute([1, 2, 0])
            let n = p.layerNorm(weight: w, bias: b).silu() + p.rmsNorm(weight: w)
            let s = Tensor.concat([n.slice(axis: 2, start: 1, length: 3), n.slice(axis: 1, start: 0, length: 2).reshape([4, 12])
                .reshape([4, 2, 6]).slice(axis: 2, start: 0, length: 3)], axis: 1)
            let a = s.slice(axis: 2, start: 1, length: 2).gelu() + s.transpose(0, 1).silu().transpose(0, 1).slice(axis: 2, start: 0, length: 2)
            let (cos, sin) = RoPE3D.frequencies(grid: (t: 1, h: 2, w: 3), dims: [2, 2, 2])
            let rot = h.reshape([4, 5, 6, 1]).transpose(1, 3).reshape([4, 6, 1, 5]).slice(axis: 3, start: 0, length: 4)
                .reshape([4, 6, 2, 2]).slice(axis: 0, start: 1, length: 1).squeeze(0).unsqueeze(0).applyRotary(cos: cos.slice(axis: 1, start: 0, length: 2), sin: sin.slice(axis: 1, start: 0, length: 2))
            let loss = (s.sum(axes: [0]) * s.sum(axes: [0]).exp()).sum() + s.mean(axes: [1, 2]).square().sum() + a.square().sum() + rot.square().sum()
            loss.backward()
            return [h.scalars, p.scalars, n.scalars, s.scalars, a.scalars, rot.scalars, loss.scalars, x.grad!.scalars, y.grad!.scalars,
                    z.grad!.scalars, w.grad!.scalars, b.grad!.scalars, Tensor(zeros: [7, 9]).scalars]
        }
        let saved = (Parallel.threads, Parallel.grain)
        defer { (Parallel.threads, Parallel.grain) = saved }
        Parallel.threads = 1
        let serial = run()
        for threads in [2, 3] {
            Parallel.threads = threads
            Parallel.grain = 1
            let split = run()
            for (i, (a, b)) in zip(serial, split).enumerated() {
                XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "output \(i) differs with \(threads) threads")
            }
        }
        XCTAssertEqual(serial[12], [Float](repeating: 0, count: 63))
    }

    /// Activations read a view whose last axis is contiguous in place; values and gradients
    /// equal those through an explicit copy.
    func testActivationsOfStridedViewsEqualContiguous() {
        for f in [{ (t: Tensor) in t.gelu() }, { (t: Tensor) in t.silu() }] {
            var results: [[Float]] = []
            for copyFirst in [false, true] {
                let x = randomTensor([3, 4, 10], seed: 21)
                x.requiresGrad = true
                let v = x.slice(axis: 2, start: 3, length: 5).transpose(0, 1)
                let y = f(copyFirst ? v.contiguous() : v)
                (y * randomTensor([4, 3, 5], seed: 22)).sum().backward()
                results.append(y.scalars + x.grad!.scalars)
            }
            XCTAssertEqual(results[0], results[1])
            XCTAssertTrue(results[0].contains { $0 != 0 })
            // Outside a graph the view is read in place (no copy); same values.
            let x = randomTensor([3, 4, 10], seed: 21)
            let v = x.slice(axis: 2, start: 3, length: 5).transpose(0, 1)
            let (inPlace, copied) = GradMode.withoutGrad { (f(v).scalars, f(v.contiguous()).scalars) }
            XCTAssertEqual(inPlace, copied)
            XCTAssertEqual(inPlace, Array(results[0].prefix(inPlace.count)))
        }
    }

    /// GELU (tanh form, computed as v * sigmoid(2u)) and SiLU against float64 over [-12, 12]. The
    /// exponent's own rounding (|a| * 2^-24 for e^a) bounds the relative error, so the tolerance is
    /// 4e-7 * (1 + |a|) relative, or 1e-30 absolute (for v below about -10, where e^a is clamped
    /// at e^88 and the result is v / 1.65e38 instead of a value below 1e-37).
    func testGELUAndSiLUMatchFloat64() {
        let xs = (0...2400).map { Float($0) * 0.01 - 12 }
        let x = Tensor(xs, shape: [xs.count])
        let gelu = x.gelu().scalars, silu = x.silu().scalars
        for (i, v) in xs.enumerated() {
            let d = Double(v)
            // 0.5 d (1 + tanh(u)) = d / (1 + e^(-2u)); the tanh form cancels to 0 in float64 too
            let a = -2 * 0.7978845608028654 * (d + 0.044715 * d * d * d)
            let g = d / (1 + Foundation.exp(a)), s = d / (1 + Foundation.exp(-d))
            XCTAssertLessThanOrEqual(abs(Double(gelu[i]) - g), 4e-7 * (1 + abs(a)) * abs(g) + 1e-30, "gelu(\(v)) = \(gelu[i]), float64 \(g)")
            XCTAssertLessThanOrEqual(abs(Double(silu[i]) - s), 4e-7 * (1 + abs(d)) * abs(s) + 1e-30, "silu(\(v)) = \(silu[i]), float64 \(s)")
        }
    }

    /// Norms of a tensor with no rows and activations of a scalar neither crash nor change shape.
    func testNormsOfEmptyTensorsAndActivationsOfScalars() {
        let empty = Tensor(zeros: [0, 4])
        XCTAssertEqual(empty.layerNorm().shape, [0, 4])
        XCTAssertEqual(empty.rmsNorm(weight: Tensor(repeating: 1, shape: [4])).shape, [0, 4])
        let scalar = Tensor([1], shape: [])
        XCTAssertEqual(scalar.gelu().scalars[0], 0.8412, accuracy: 1e-3)
        XCTAssertEqual(scalar.silu().scalars[0], 0.7311, accuracy: 1e-3)
    }

    /// Workers get a short OpenBLAS spin (its idle threads would otherwise compete for the core
    /// that elementwise work is split onto), unless the user set one; a forced weak core type
    /// is dropped only on an AVX-512 CPU and only without HV_KEEP_OPENBLAS_CORETYPE=1.
    func testChildEnvironmentSetsOpenBLASThreadTimeout() {
        let base = ["PATH": "/usr/bin"]
        XCTAssertEqual(BLASEnvironment.childEnvironment(base)["OPENBLAS_THREAD_TIMEOUT"], BLASEnvironment.defaultThreadTimeout)
        XCTAssertEqual(BLASEnvironment.childEnvironment(base.merging(["OPENBLAS_THREAD_TIMEOUT": "22"]) { $1 })["OPENBLAS_THREAD_TIMEOUT"], "22")
        let forced = base.merging(["OPENBLAS_CORETYPE": "Haswell"]) { $1 }
        XCTAssertEqual(BLASEnvironment.childEnvironment(forced)["OPENBLAS_CORETYPE"], BLASEnvironment.cpuHasAVX512 ? nil : "Haswell")
        let kept = forced.merging(["HV_KEEP_OPENBLAS_CORETYPE": "1"]) { $1 }
        XCTAssertEqual(BLASEnvironment.childEnvironment(kept)["OPENBLAS_CORETYPE"], "Haswell")
    }

    func testGradientAccumulatesAcrossBackwardCalls() {
        let w = Tensor([1, 2, 3], shape: [3], requiresGrad: true)
        (w * 2).sum().backward()
        XCTAssertEqual(w.grad!.scalars, [2, 2, 2])
        (w * w).sum().backward()
        XCTAssertEqual(w.grad!.scalars, [4, 6, 8])
        w.zeroGrad()
        XCTAssertNil(w.grad)
    }

    /// A leaf keeps, as its .grad, a gradient that nothing else holds (a weight's fresh dW:
    /// no copy), and copies one that is shared (add hands one gradient to both inputs).
    func testLeavesAdoptOnlyUnsharedGradients() {
        let w = Tensor([1, 2, 3], shape: [3], requiresGrad: true)
        weak var made: Tensor?
        let y = Tensor.recordCustom("double", output: GradMode.withoutGrad { w * 2 }, inputs: [w]) { g in
            let d = g * 2
            made = d
            return [d]
        }
        y.sum().backward()
        XCTAssertNotNil(made)
        XCTAssertTrue(w.grad === made, "the unshared gradient was copied")
        XCTAssertEqual(w.grad!.scalars, [2, 2, 2])
        (w * 3).sum().backward()  // accumulates into the adopted tensor
        XCTAssertEqual(w.grad!.scalars, [5, 5, 5])

        let a = Tensor([1, 2], shape: [2], requiresGrad: true), b = Tensor([3, 4], shape: [2], requiresGrad: true)
        let seed = Tensor([5, 6], shape: [2])
        (a + b).backward(seed)
        XCTAssertFalse(a.grad === b.grad || a.grad!.pointer == b.grad!.pointer || a.grad!.pointer == seed.pointer)
        a.grad!.pointer[0] = 100
        XCTAssertEqual(b.grad!.scalars, [5, 6])
        XCTAssertEqual(seed.scalars, [5, 6])
        // add's rule hands both inputs one gradient that only the sweep holds
        a.zeroGrad(); b.zeroGrad()
        (a + b).sum().backward()
        XCTAssertFalse(a.grad === b.grad || a.grad!.pointer == b.grad!.pointer)
        a.grad!.pointer[0] = 100
        XCTAssertEqual(b.grad!.scalars, [1, 1])
    }

    /// The graph is freed after backward: backward rules capture their outputs, which own their
    /// nodes, so without releasing nodes every step's activations would stay alive.
    func testGraphIsFreedAfterBackward() {
        let w = Tensor([0.5, -1, 2], shape: [3], requiresGrad: true)
        weak var weakOut: Tensor?
        do {
            let y = (w * 2).exp()
            weakOut = y
            y.sum().backward()
        }
        XCTAssertNil(weakOut, "an op output is still alive after backward (reference cycle)")
        XCTAssertNotNil(w.grad)
    }

    /// The tiled VAE decode's allocator scope: large blocks are mmap-ed inside (glibc counts
    /// them apart from the heap) and the previous thresholds come back after.
    func testResidentMemoryScopeRestoresThresholds() throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["MALLOC_MMAP_THRESHOLD_"] != nil, "glibc's environment overrides the thresholds")
        HVRuntime.configureProcess()
        let before = HVRuntime.mallocThresholds
        XCTAssertEqual(before.mmap, 1 << 30)
        let (mapped, heapFree, inside) = HVRuntime.withResidentMemory { () -> (Int, Int, (mmap: Int, trim: Int)) in
            // glibc serves a request from a free heap chunk before mmap-ing it, whatever the
            // threshold; earlier tests may have left one, so the mmap check needs a heap without.
            HVRuntime.trimHeap()
            let stats = HVRuntime.heapStats()
            let t = Tensor(zeros: [16 << 20])  // 64 MB
            return (withExtendedLifetime(t) { HVRuntime.heapStats().mmapped - stats.mmapped }, stats.arena - stats.inUse, HVRuntime.mallocThresholds)
        }
        if heapFree < 64 << 20 { XCTAssertGreaterThanOrEqual(mapped, 64 << 20, "heap free \(heapFree)") }
        XCTAssertEqual(inside.mmap, 256 << 10)
        XCTAssertEqual(HVRuntime.mallocThresholds.mmap, before.mmap)
        XCTAssertEqual(HVRuntime.mallocThresholds.trim, before.trim)
    }

    func testNoGradModeRecordsNothing() {
        let w = Tensor([1, 2], shape: [2], requiresGrad: true)
        let y = GradMode.withoutGrad { (w * 3).exp() }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertTrue(y.isLeaf)
        XCTAssertTrue(GradMode.isEnabled)
    }

    func testSharedSubexpressionGradients() {
        let x = Tensor([0.5, -1.5], shape: [2], requiresGrad: true)
        let y = x.tanh()
        (y * y + y).sum().backward()  // d/dx = (2y + 1)(1 - y^2)
        let expected = [0.5, -1.5].map { v -> Float in let t = Float(Foundation.tanh(v)); return (2 * t + 1) * (1 - t * t) }
        for (g, e) in zip(x.grad!.scalars, expected) { XCTAssertEqual(g, e, accuracy: 1e-6) }
    }

    func testRecomputeGivesSameGradients() {
        let x = randomTensor([3, 8], seed: 3), w1 = randomTensor([16, 8], seed: 4), w2 = randomTensor([8, 16], seed: 5)
        for t in [x, w1, w2] { t.requiresGrad = true }
        func block(_ h: Tensor) -> Tensor { h.linear(w1).gelu().linear(w2).layerNorm() + h }
        block(x).square().sum().backward()
        let plain = [x, w1, w2].map { $0.grad!.scalars }
        for t in [x, w1, w2] { t.zeroGrad() }
        let y = recompute([x]) { block($0[0]) }
        y.square().sum().backward()
        for (i, t) in [x, w1, w2].enumerated() { XCTAssertEqual(t.grad!.scalars, plain[i], "tensor \(i)") }
    }

    /// A leaf's grad-ready hook fires once per sweep, as soon as its gradient is final — in the
    /// middle of backward, before earlier layers' leaves have any — in the reverse of the forward
    /// order, also inside recomputed regions (nested sweeps).
    func testGradReadyHookFiresOnceWhenTheLeafIsFinal() {
        let x = randomTensor([2, 4], seed: 7)
        let ws = (0..<3).map { randomTensor([4, 4], seed: 10 + UInt64($0)) }
        for w in ws { w.requiresGrad = true }
        for useRecompute in [false, true] {
            var fired: [(Int, [Float], [Bool])] = []
            for (i, w) in ws.enumerated() {
                w.zeroGrad()
                w.setGradReadyHook { t in fired.append((i, t.grad!.scalars, ws.map { $0.grad != nil })) }
            }
            // ws[0] is used twice (first and last layer): final only after its first use's backward.
            func layer(_ h: Tensor, _ w: Tensor) -> Tensor { h.linear(w).tanh() + h }
            var h = x
            for w in ws + [ws[0]] {
                h = useRecompute ? recompute([h]) { layer($0[0], w) } : layer(h, w)
            }
            h.square().sum().backward()
            let what = useRecompute ? "recompute" : "plain"
            if useRecompute {
                // One sweep per region: ws[0] fires once in each of its two regions.
                XCTAssertEqual(fired.map(\.0), [0, 2, 1, 0], what)
            } else {
                XCTAssertEqual(fired.map(\.0), [2, 1, 0], what)
                for (i, g, _) in fired { XCTAssertEqual(g, ws[i].grad!.scalars, "\(what): ws[\(i)] fired before its gradient was final") }
                XCTAssertEqual(fired[0].2, [false, false, true], "\(what): ws[2] fired after earlier layers' gradients existed")
            }
            XCTAssertEqual(fired.last!.1, ws[0].grad!.scalars, what)
        }
        for w in ws { w.setGradReadyHook(nil) }
    }

    func testRNGIsDeterministicAndSplits() {
        var a = HVRandom(seed: 42), b = HVRandom(seed: 42)
        XCTAssertEqual((0..<5).map { _ in a.next() }, (0..<5).map { _ in b.next() })
        var r0 = HVRandom(seed: 42).split(0), r1 = HVRandom(seed: 42).split(1)
        XCTAssertNotEqual(r0.next(), r1.next())
        var c = HVRandom(seed: 1)
        _ = c.normal()
        var d = HVRandom(seed: 1, state: c.state)
        XCTAssertEqual(c.next(), d.next(), "restored state continues the stream")
        var n = HVRandom(seed: 9)
        let xs = (0..<20_000).map { _ in Double(n.normal()) }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(variance, 1, accuracy: 0.05)
        var p = HVRandom(seed: 3)
        XCTAssertEqual(p.permutation(50).sorted(), Array(0..<50))
    }

    func testBFloat16RoundTrip() {
        XCTAssertEqual(BFloat16(1.0).bits, 0x3F80)
        XCTAssertEqual(BFloat16(-2.5).float, -2.5)
        // 1 + 2^-8 is halfway between two bf16 values; ties go to even (1.0).
        XCTAssertEqual(BFloat16(1.00390625).float, 1.0)
        XCTAssertEqual(BFloat16(1.01171875).float, 1.015625)
        let x: Float = 3.14159
        XCTAssertEqual(BFloat16(x).float, x, accuracy: x / 128)
    }

    func testRoPEFrequencies() {
        let (c, s) = RoPE3D.frequencies(grid: (2, 3, 3), dims: [16, 56, 56])
        XCTAssertEqual(c.shape, [18, 128])
        // token (t=1, h=0, w=0) = index 9: time channels use 1/256^(2k/16) = 2^-k.
        let row = Array(c.scalars[(9 * 128)..<(10 * 128)]), srow = Array(s.scalars[(9 * 128)..<(10 * 128)])
        XCTAssertEqual(row[0], Float(Foundation.cos(1.0)), accuracy: 1e-6)
        XCTAssertEqual(row[1], row[0])
        XCTAssertEqual(row[2], Float(Foundation.cos(0.5)), accuracy: 1e-6)
        XCTAssertEqual(srow[4], Float(Foundation.sin(0.25)), accuracy: 1e-6)
        XCTAssertEqual(row[16], 1, "h = 0 so the height channels do not rotate")
        // token (t=0, h=1, w=2) = index 5: width channel 72 + 2k rotates by 2 * 256^(-2k/56).
        let r5 = Array(c.scalars[(5 * 128)..<(6 * 128)])
        XCTAssertEqual(r5[72 + 2], Float(Foundation.cos(2 * Foundation.pow(256.0, -2.0 / 56.0))), accuracy: 1e-6)
        XCTAssertEqual(r5[16], Float(Foundation.cos(1.0)), accuracy: 1e-6)
    }

    func testRotaryPreservesNormAndIsInvertible() {
        let x = randomTensor([1, 18, 2, 128], seed: 6)
        let (c, s) = RoPE3D.frequencies(grid: (2, 3, 3), dims: [16, 56, 56])
        let y = x.applyRotary(cos: c, sin: s)
        XCTAssertEqual(y.square().sum().item, x.square().sum().item, accuracy: 1e-2)
        let back = y.applyRotary(cos: c, sin: s.neg())
        XCTAssertLessThan(maxAbsDiff(back, x), 1e-5)
    }

    /// Without a graph, q/k/v are views of a fused projection's column slice, and RMSNorm +
    /// rotary in one pass over such a strided view equals the separate ops (the same arithmetic:
    /// bit-equal), with rotary tables for the first tokens and without tables.
    func testQKVViewsAndRMSNormRotaryEqualSeparateOps() {
        let B = 2, L = 7, heads = 3, D = 8, W = 3 * heads * D + 10
        let wide = randomTensor([B, L, W], seed: 5)
        let qkv = wide.slice(axis: 2, start: 4, length: 3 * heads * D)
        guard let (q, k, v) = qkv.qkvViews(heads: heads) else { return XCTFail("no views of a column slice") }
        let ws = wide.scalars
        for (part, x) in [q, k, v].enumerated() {
            XCTAssertEqual(x.shape, [B, L, heads, D])
            XCTAssertTrue(x.storage === wide.storage, "a copy, not a view")
            let expected = (0..<(B * L)).flatMap { row in (0..<(heads * D)).map { ws[row * W + 4 + part * heads * D + $0] } }
            XCTAssertEqual(x.scalars, expected)
        }
        let w = randomTensor([D], seed: 6)
        let (c, s) = RoPE3D.frequencies(grid: (1, 1, 5), dims: [2, 2, 4])
        // q, k (a token's heads adjacent) and a transposed tensor (heads apart)
        for x in [q, k, randomTensor([B, heads, L, D], seed: 7).transpose(1, 2)] {
            XCTAssertEqual(x.rmsNormRotary(weight: w, eps: 1e-6, cos: c, sin: s).scalars,
                           x.contiguous().rmsNorm(weight: w, eps: 1e-6).applyRotary(cos: c, sin: s).scalars)
            XCTAssertEqual(x.rmsNormRotary(weight: w, eps: 1e-6, cos: nil, sin: nil).scalars, x.contiguous().rmsNorm(weight: w, eps: 1e-6).scalars)
        }
        // D = 32 (the 16-lane sums); three samples of 180 tokens, the rotary tables covering 100 of
        // each; on two threads the 540 tokens split at 270, token 90 of the second sample
        let (c2, s2) = RoPE3D.frequencies(grid: (1, 10, 10), dims: [8, 12, 12])
        let wide2 = randomTensor([3, 180, 3 * 4 * 32], seed: 8), w2 = randomTensor([32], seed: 9)
        guard let (q2, _, _) = wide2.qkvViews(heads: 4) else { return XCTFail("no views") }
        XCTAssertEqual(q2.rmsNormRotary(weight: w2, eps: 1e-6, cos: c2, sin: s2).scalars,
                       q2.contiguous().rmsNorm(weight: w2, eps: 1e-6).applyRotary(cos: c2, sin: s2).scalars)
        qkv.requiresGrad = true
        XCTAssertNil(qkv.qkvViews(heads: heads), "views under a graph")
    }

    /// The gated residual's one pass equals the product and the sum apart, bit for bit, for
    /// a batch of two; under a graph it is those ops, with their gradients.
    func testAddingGatedEqualsSeparateOps() {
        let big = randomTensor([2, 700, 64], seed: 24), by = randomTensor([2, 700, 64], seed: 25), bg = randomTensor([2, 64], seed: 26)
        XCTAssertEqual(GradMode.withoutGrad { big.addingGated(by, gate: bg) }.scalars, (big + by * bg.unsqueeze(1)).scalars, "several chunks")
        let x = randomTensor([2, 5, 7], seed: 21), y = randomTensor([2, 5, 7], seed: 22), g = randomTensor([2, 7], seed: 23)
        let fused = GradMode.withoutGrad { x.addingGated(y, gate: g) }
        XCTAssertEqual(fused.scalars, (x + y * g.unsqueeze(1)).scalars)
        g.requiresGrad = true
        x.addingGated(y, gate: g).sum().backward()
        let ys = y.scalars
        var expected = [Float](repeating: 0, count: 14)
        for b in 0..<2 { for t in 0..<5 { for h in 0..<7 { expected[b * 7 + h] += ys[(b * 5 + t) * 7 + h] } } }
        for (a, e) in zip(g.grad!.scalars, expected) { XCTAssertEqual(a, e, accuracy: 1e-5) }
    }

    /// The exponential of softmax and attention (hv_exp_shift_sum) against float64 on [-87, 0] and
    /// a few positive values: within 2.5e-7 + |x| * 1.5e-8 relative; e^0 exactly 1, e^-inf (a
    /// masked key) and anything at or below -88 exactly 0; and the returned sum is their sum.
    func testExpShiftSumMatchesFloat64() {
        var xs = (0...8700).map { -Float($0) * 0.01 } + [3, 10, 40, 87]
        xs += [-88, -100, -.infinity]
        var row = xs
        let sum = hv_exp_shift_sum(&row, row.count, 0)
        for (i, x) in xs.enumerated() where x > -87.5 {
            let e = Foundation.exp(Double(x))
            XCTAssertLessThanOrEqual(abs(Double(row[i]) - e), (2.5e-7 + Double(abs(x)) * 1.5e-8) * e, "exp(\(x)) = \(row[i]), float64 \(e)")
        }
        XCTAssertEqual(row[0], 1)
        XCTAssertEqual(Array(row.suffix(3)), [0, 0, 0])
        XCTAssertEqual(Double(sum), row.reduce(0.0) { $0 + Double($1) }, accuracy: 1e-6 * Double(sum))
        var shifted: [Float] = [5, 5 - 1e-3, -Float.infinity]
        XCTAssertEqual(Double(hv_exp_shift_sum(&shifted, 3, 5)), 1 + Foundation.exp(-1e-3), accuracy: 1e-6)
        XCTAssertEqual(shifted[0], 1)
        XCTAssertEqual(shifted[2], 0)
    }

    /// softmax (and so blocked attention) uses the vectorised exp kernel: check it against float64.
    func testSoftmaxMatchesFloat64() {
        let x = randomTensor([7, 300], seed: 11, std: 8)
        let y = x.softmax(axis: -1).scalars, xs = x.scalars
        var worst = 0.0
        for r in 0..<7 {
            let row = xs[(r * 300)..<((r + 1) * 300)].map(Double.init)
            let m = row.max()!
            let e = row.map { Foundation.exp($0 - m) }
            let s = e.reduce(0, +)
            for j in 0..<300 { worst = max(worst, abs(e[j] / s - Double(y[r * 300 + j]))) }
        }
        XCTAssertLessThan(worst, 1e-6)
        XCTAssertEqual(Tensor([0, -Float.infinity, 0], shape: [3]).softmax().scalars, [0.5, 0, 0.5])
        XCTAssertEqual(Tensor([-Float.infinity, -.infinity], shape: [2]).softmax().scalars, [0.5, 0.5], "a row of -inf: uniform")
    }

    func testBroadcastErrorsAreCaughtByShape() {
        XCTAssertNil(broadcastShapes([2, 3], [4]))
        XCTAssertEqual(broadcastShapes([2, 1, 3], [4, 1]), [2, 4, 3])
    }
}
