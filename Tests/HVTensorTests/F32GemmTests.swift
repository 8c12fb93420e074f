import CHVKernels
import HVTensor
import XCTest
import _HVTestSupport

/// hv's fp32 GEMM (`BLAS.Kernel.hv`, AVX2 + FMA): the default fp32 path on such CPUs.
final class F32GemmTests: XCTestCase {
    private var savedThreads = 1

    override func setUpWithError() throws {
        try XCTSkipUnless(hv_f32_gemm_available() != 0, "this CPU has no AVX2 + FMA")
        savedThreads = BLAS.threads
    }

    override func tearDown() {
        BLAS.kernel = BLAS.defaultKernel
        BLAS.threads = savedThreads
    }

    /// Every transpose combination; alpha 1 and 1/8; beta 0 and 1; with and without a bias; leading
    /// dimensions wider than the matrices; sizes that are not multiples of the 6 x 16 tile, K past one
    /// 512 block, M past one 144-row block, N past one 2048-column block, both split directions (M > N,
    /// N > M); up to 48 rows against a transposed B (from 8 rows the thin path, B's rows as the tile's
    /// broadcast operand; below, the small-M path's dot products); 1, 2 and 3 threads, on shapes large
    /// enough to be split. Equal to a float64 sum within fp32 summation error.
    func testMatchesFloat64Reference() {
        var rng = HVRandom(seed: 11)
        BLAS.kernel = .hv
        let shapes = [(1, 1, 1), (1, 300, 70), (5, 40, 9), (16, 1, 1), (17, 35, 7), (18, 32, 9), (50, 70, 33), (97, 200, 513), (150, 31, 64), (300, 17, 1030), (20, 2100, 40),
                      // Above the 2^21 multiply-adds under which a product runs on one thread: the thin and small paths'
                      // column split, and N past one 2048-column block split over threads.
                      (2, 9000, 130), (40, 4200, 16),
                      // The thin path's edges (8 and 48 rows; 7 takes the small path), a split whose
                      // last 6-row strip is partial, and K past THIN_MAX_K (the small path again).
                      (8, 50, 33), (48, 61, 70), (7, 45, 20), (24, 4201, 32), (10, 20, 4500),
                      // One row (the one-row paths: B's rows contiguous, or its columns), split over threads.
                      (1, 600, 3000), (1, 7, 3000), (1, 2, 700)]
        for (m, n, k) in shapes {
            for transA in [false, true] {
                for transB in [false, true] {
                    for (alpha, beta, withBias): (Float, Float, Bool) in [(1, 0, false), (1, 1, false), (0.125, 1, true), (1, 0, true)] {
                        for threads in [1, 2, 3] {
                            let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 5, ldc = n + 2
                            let a = (0..<((transA ? k : m) * lda)).map { _ in rng.uniform() * 2 - 1 }
                            let b = (0..<((transB ? n : k) * ldb)).map { _ in rng.uniform() * 2 - 1 }
                            let bias = (0..<n).map { _ in rng.uniform() * 2 - 1 }
                            let c0 = (0..<(m * ldc)).map { _ in rng.uniform() * 2 - 1 }
                            var c = c0
                            BLAS.threads = threads
                            a.withUnsafeBufferPointer { ap in
                                b.withUnsafeBufferPointer { bp in
                                    bias.withUnsafeBufferPointer { biasp in
                                        c.withUnsafeMutableBufferPointer { cp in
                                            BLAS.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ap.baseAddress!, lda: lda,
                                                       b: bp.baseAddress!, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: ldc,
                                                       bias: withBias ? biasp.baseAddress! : nil)
                                        }
                                    }
                                }
                            }
                            var worst = 0.0
                            for i in 0..<m {
                                for j in 0..<n {
                                    var s = 0.0, mag = 0.0
                                    for l in 0..<k {
                                        let x = Double(transA ? a[l * lda + i] : a[i * lda + l])
                                        let y = Double(transB ? b[j * ldb + l] : b[l * ldb + j])
                                        s += x * y
                                        mag += abs(x * y)
                                    }
                                    s *= Double(alpha)
                                    mag *= Double(alpha)
                                    if beta == 1 { s += Double(c0[i * ldc + j]); mag += abs(Double(c0[i * ldc + j])) }
                                    if withBias { s += Double(bias[j]); mag += abs(Double(bias[j])) }
                                    worst = max(worst, abs(s - Double(c[i * ldc + j])) / (mag + 1e-6))
                                }
                                // The padding between rows of C is not written.
                                for j in n..<ldc where c[i * ldc + j] != c0[i * ldc + j] {
                                    XCTFail("wrote C(\(i), \(j)) past n = \(n)")
                                }
                            }
                            XCTAssertLessThan(worst, 2e-6, "m \(m) n \(n) k \(k) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta) bias \(withBias) threads \(threads)")
                        }
                    }
                }
            }
        }
    }

    /// `linearGELU`, with GELU applied inside the product (hv's kernel: per output block, in the
    /// large and thin paths, after the last of several K blocks) or after it (OpenBLAS),
    /// equals `linear` followed by `gelu` on the same columns bit for bit; columns before
    /// `fromColumn` are the plain product.
    func testLinearGELUEqualsLinearThenGELU() {
        var rng = HVRandom(seed: 8)
        for (rows, inF, outF) in [(300, 96, 200), (20, 70, 130), (130, 1100, 90)] {
            let x = Tensor.randn([rows, inF], rng: &rng), w = Tensor.randn([outF, inF], std: 0.2, rng: &rng)
            let b = Tensor.randn([outF], rng: &rng)
            for kernel in [BLAS.Kernel.hv, .openblas] {
                for threads in [1, 2] {
                    BLAS.kernel = kernel
                    BLAS.threads = threads
                    for from in [0, 37, outF] {
                        let fused = GradMode.withoutGrad { x.linearGELU(w, b, fromColumn: from) }
                        let y = x.linear(w, b)
                        let ref = from == 0 ? y.gelu() : Tensor.concat([y.slice(axis: 1, start: 0, length: from),
                                                                       y.slice(axis: 1, start: from, length: outF - from).gelu()], axis: 1)
                        XCTAssertEqual(fused.scalars, ref.scalars, "rows \(rows) in \(inF) out \(outF) from \(from) \(kernel) threads \(threads)")
                    }
                }
            }
        }
    }

    /// One row against a B with contiguous rows (streamed by rows) or contiguous columns (dot
    /// products with B's columns), with a bias: GELU on the columns from geluFrom equals the
    /// product followed by GELU, on 1 and 2 threads.
    func testOneRowProductWithGELU() {
        var rng = HVRandom(seed: 9)
        BLAS.kernel = .hv
        let (n, k) = (600, 3000)
        let a = Tensor.randn([1, k], rng: &rng), b = Tensor.randn([k * n], std: 0.05, rng: &rng), bias = Tensor.randn([n], rng: &rng)
        for transB in [false, true] {
            for threads in [1, 2] {
                BLAS.threads = threads
                for from in [0, 100, n] {
                    let fused = Tensor(uninitialized: [1, n]), plain = Tensor(uninitialized: [1, n])
                    BLAS.sgemm(transB: transB, m: 1, n: n, k: k, a: a.pointer, lda: k, b: b.pointer, ldb: transB ? k : n, c: fused.pointer, ldc: n,
                               bias: bias.pointer, geluFrom: from)
                    BLAS.sgemm(transB: transB, m: 1, n: n, k: k, a: a.pointer, lda: k, b: b.pointer, ldb: transB ? k : n, c: plain.pointer, ldc: n,
                               bias: bias.pointer)
                    let ref = from == 0 ? plain.gelu() : Tensor.concat([plain.slice(axis: 1, start: 0, length: from),
                                                                        plain.slice(axis: 1, start: from, length: n - from).gelu()], axis: 1)
                    XCTAssertEqual(fused.scalars, ref.scalars, "transB \(transB) from \(from) threads \(threads)")
                }
            }
        }
    }

    /// `linear(concatenating:)` reads a part that is a column slice of a wider tensor in place
    /// (its rows one stride apart); the result and gradients equal those of contiguous parts.
    func testLinearConcatenatingReadsColumnSlicesInPlace() {
        var rng = HVRandom(seed: 9)
        let wide = Tensor.randn([2, 7, 50], rng: &rng), other = Tensor.randn([2, 7, 12], rng: &rng)
        let w = Tensor.randn([9, 30 + 12], rng: &rng), b = Tensor.randn([9], rng: &rng)
        wide.requiresGrad = true
        let slice = wide.slice(axis: 2, start: 20, length: 30)
        let y = Tensor.linear(concatenating: [slice, other], w, b)
        (y * y).sum().backward()
        let gradWide = wide.grad!.copy()
        wide.zeroGrad()
        let y2 = Tensor.linear(concatenating: [wide.slice(axis: 2, start: 20, length: 30).contiguous(), other], w, b)
        (y2 * y2).sum().backward()
        XCTAssertEqual(y.scalars, y2.scalars)
        XCTAssertEqual(gradWide.scalars, wide.grad?.scalars)
        // Parts whose rows are not one stride apart are copied first: a transposed part, and 7 of
        // the 9 tokens of a [2, 9, 30] tensor (rows 30 apart within a sample, 270 between samples).
        let transposed = Tensor.randn([2, 30, 7], rng: &rng).transpose(1, 2)
        let tokens = Tensor.randn([2, 9, 30], rng: &rng).slice(axis: 1, start: 2, length: 7)
        for part in [transposed, tokens] {
            let y3 = Tensor.linear(concatenating: [part, other], w, b)
            let y4 = Tensor.linear(concatenating: [part.contiguous(), other], w, b)
            XCTAssertEqual(y3.scalars, y4.scalars)
        }
    }

    /// A linear layer with a bias (the bias added in the kernel's epilogue) and its gradients agree
    /// with OpenBLAS's sgemm (the bias copied into C first) to fp32 rounding.
    func testLinearMatchesOpenBLAS() {
        var rng = HVRandom(seed: 5)
        let x = Tensor.randn([2, 150, 96], rng: &rng), w = Tensor.randn([200, 96], std: 0.1, rng: &rng)
        let bias = Tensor.randn([200], rng: &rng)
        func run(_ kernel: BLAS.Kernel) -> [Tensor] {
            BLAS.kernel = kernel
            let xv = x.copy(), wv = w.copy(), bv = bias.copy()
            for t in [xv, wv, bv] { t.requiresGrad = true }
            let y = xv.linear(wv, bv)
            (y * y).sum().backward()
            return [y.detached(), xv.grad!, wv.grad!, bv.grad!]
        }
        let hv = run(.hv), blas = run(.openblas)
        for (i, (h, o)) in zip(hv, blas).enumerated() {
            let scale = o.scalars.map { abs($0) }.max()!
            XCTAssertLessThan(maxAbsDiff(h, o) / scale, 1e-5, "output \(i)")
        }
    }
}
