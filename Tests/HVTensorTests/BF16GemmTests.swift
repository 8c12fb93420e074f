import CHVKernels
import HVTensor
import XCTest
import _HVTestSupport

/// The bf16 GEMM (`MatmulPrecision.bf16`): operands rounded to bf16, products summed in fp32.
final class BF16GemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(MatmulPrecision.bf16Available, "this CPU has no AVX512-BF16")
    }

    override func tearDown() {
        MatmulPrecision.current = .fp32
        MatmulPrecision.minimumMACs = 32_768
        BLAS.threads = 2
    }

    /// Every transpose combination, alpha 1 and 1/8, beta 0 and 1, awkward sizes (odd K, M and N not multiples of
    /// the 12 x 32 tile, K past one 384 block), 1, 2 and 3 threads (3 grows the GEMM's worker pool after
    /// it has served calls): equal to a float64 sum of the
    /// bf16-rounded products within fp32 summation error.
    func testMatchesBF16RoundedReference() {
        var rng = HVRandom(seed: 7)
        MatmulPrecision.minimumMACs = 0 // the small shapes too (by default they stay in sgemm)
        let shapes = [(1, 1, 1), (13, 35, 7), (12, 32, 2), (50, 70, 33), (97, 200, 385), (130, 300, 64), (300, 17, 801)]
        for (m, n, k) in shapes {
            for transA in [false, true] {
                for transB in [false, true] {
                    for (alpha, beta): (Float, Float) in [(1, 0), (1, 1), (0.125, 1)] {
                        for threads in [1, 2, 3] {
                            let a = (0..<(m * k)).map { _ in rng.uniform() * 2 - 1 }, b = (0..<(k * n)).map { _ in rng.uniform() * 2 - 1 }
                            let c0 = (0..<(m * n)).map { _ in rng.uniform() * 2 - 1 }
                            var c = c0
                            let lda = transA ? m : k, ldb = transB ? k : n
                            BLAS.threads = threads
                            MatmulPrecision.current = .bf16
                            a.withUnsafeBufferPointer { ap in
                                b.withUnsafeBufferPointer { bp in
                                    c.withUnsafeMutableBufferPointer { cp in
                                        BLAS.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ap.baseAddress!, lda: lda,
                                                   b: bp.baseAddress!, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: n)
                                    }
                                }
                            }
                            MatmulPrecision.current = .fp32
                            var worst = 0.0
                            for i in 0..<m {
                                for j in 0..<n {
                                    var s = 0.0, mag = 0.0
                                    for l in 0..<k {
                                        let x = Double(hv_round_bf16(transA ? a[l * lda + i] : a[i * lda + l]))
                                        let y = Double(hv_round_bf16(transB ? b[j * ldb + l] : b[l * ldb + j]))
                                        s += x * y
                                        mag += abs(x * y)
                                    }
                                    s *= Double(alpha)
                                    mag *= Double(alpha)
                                    if beta == 1 { s += Double(c0[i * n + j]); mag += abs(Double(c0[i * n + j])) }
                                    worst = max(worst, abs(s - Double(c[i * n + j])) / (mag + 1e-6))
                                }
                            }
                            XCTAssertLessThan(worst, 2e-6, "m \(m) n \(n) k \(k) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta) threads \(threads)")
                        }
                    }
                }
            }
        }
    }

    /// A linear layer in bf16 differs from fp32 by bf16 rounding (relative ~2^-8 per operand),
    /// not more, and not zero (the bf16 path is taken); its gradients too.
    func testLinearInBF16IsFP32UpToOperandRounding() {
        var rng = HVRandom(seed: 3)
        let x = Tensor.randn([2, 96, 160], rng: &rng), w = Tensor.randn([224, 160], std: 0.1, rng: &rng)
        func run(_ p: MatmulPrecision) -> (Tensor, Tensor, Tensor) {
            MatmulPrecision.current = p
            let xv = x.copy(), wv = w.copy()
            xv.requiresGrad = true
            wv.requiresGrad = true
            let y = xv.linear(wv)
            (y * y).sum().backward()
            MatmulPrecision.current = .fp32
            return (y.detached(), xv.grad!, wv.grad!)
        }
        let (y32, dx32, dw32) = run(.fp32), (y16, dx16, dw16) = run(.bf16)
        for (name, a, b) in [("y", y32, y16), ("dx", dx32, dx16), ("dw", dw32, dw16)] {
            let scale = a.scalars.map { abs($0) }.max()!
            let err = maxAbsDiff(a, b) / scale
            XCTAssertGreaterThan(err, 1e-6, "\(name): identical to fp32, so the bf16 kernel did not run")
            XCTAssertLessThan(err, 3e-2, "\(name): bf16 off by \(err) of the largest value")
        }
    }
}
