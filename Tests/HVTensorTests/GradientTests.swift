import HVTensor
import XCTest
import _HVTestSupport

/// Finite-difference gradient checks, one per op (fp32; small shapes).
final class GradientTests: XCTestCase {
    func check(_ inputs: [Tensor], eps: Float = 1e-2, rtol: Double = 2e-2, atol: Double = 2e-3,
               file: StaticString = #filePath, line: UInt = #line, _ f: @escaping ([Tensor]) -> Tensor) {
        let failures = gradCheck(inputs, eps: eps, rtol: rtol, atol: atol, f)
        XCTAssert(failures.isEmpty, "gradient mismatches: \(failures.prefix(5))", file: file, line: line)
    }

    func testBroadcastArithmetic() {
        let a = randomTensor([3, 4, 5], seed: 1), b = randomTensor([4, 1], seed: 2)
        check([a, b]) { $0[0] + $0[1] }
        check([a, b]) { $0[0] - $0[1] }
        check([a, b]) { $0[0] * $0[1] }
        let c = randomTensor([5], seed: 3)
        let d = Tensor((0..<5).map { Float($0) * 0.3 + 1.5 }, shape: [5])
        check([a, d]) { $0[0] / $0[1] }
        check([c, a]) { $0[0] * $0[1] + $0[0] }
        check([a]) { ($0[0] * 2 + 1) / 3 - 0.5 }
    }

    func testReductions() {
        let a = randomTensor([2, 3, 4], seed: 4)
        check([a]) { $0[0].sum(axes: [0, 2]) }
        check([a]) { $0[0].sum(axis: 1, keepDims: true) }
        check([a]) { $0[0].mean(axis: -1) }
        check([a]) { $0[0].mean() }
        check([a]) { $0[0].softmax(axis: -1) }
        check([a]) { $0[0].softmax(axis: 1) }
        let b = randomTensor([2, 3, 4], seed: 5)
        check([a, b]) { $0[0].mseLoss($0[1]) }
    }

    func testUnary() {
        let a = randomTensor([3, 7], seed: 6)
        check([a]) { $0[0].gelu() }
        check([a]) { $0[0].silu() }
        check([a]) { $0[0].tanh() }
        check([a]) { $0[0].sigmoid() }
        check([a]) { $0[0].exp() }
        check([a]) { $0[0].neg() }
        let p = Tensor((0..<21).map { 0.5 + Float($0) * 0.1 }, shape: [3, 7])
        check([p]) { $0[0].log() }
        check([p]) { $0[0].sqrt() }
        check([a]) { $0[0].square() }
    }

    /// Without a graph the last-axis norms normalise in place into their output; the values
    /// equal the recorded path's bit for bit, with and without the affine, and the input is untouched.
    func testNormsWithoutGraphEqualRecorded() {
        let x = randomTensor([3, 5, 40], seed: 14), w = randomTensor([40], seed: 15), b = randomTensor([40], seed: 16)
        let before = x.scalars
        let ops: [(String, (Tensor) -> Tensor)] = [("layerNorm", { $0.layerNorm() }), ("layerNorm affine", { $0.layerNorm(weight: w, bias: b) }),
                                                  ("rmsNorm", { $0.rmsNorm() }), ("rmsNorm weight", { $0.rmsNorm(weight: w) })]
        for (name, op) in ops {
            let xg = x.copy()
            xg.requiresGrad = true
            let recorded = op(xg)
            XCTAssertNotNil(recorded.gradNode, name)
            let plain = GradMode.withoutGrad { op(x) }
            XCTAssertNil(plain.gradNode, name)
            XCTAssertEqual(plain.scalars, recorded.scalars, name)
        }
        XCTAssertEqual(x.scalars, before)
    }

    func testNorms() {
        let x = randomTensor([2, 3, 8], seed: 8), w = randomTensor([8], seed: 9), b = randomTensor([8], seed: 10)
        check([x]) { $0[0].layerNorm() }
        check([x, w, b]) { $0[0].layerNorm(weight: $0[1], bias: $0[2]) }
        check([x, w]) { $0[0].rmsNorm(weight: $0[1]) }
        check([x]) { $0[0].rmsNorm() }
        let g = randomTensor([2, 4, 2, 3, 3], seed: 11), gw = randomTensor([4], seed: 12), gb = randomTensor([4], seed: 13)
        check([g, gw, gb]) { $0[0].groupNorm(groups: 2, weight: $0[1], bias: $0[2]) }
        check([g]) { $0[0].groupNorm(groups: 4) }
        check([g, gw, gb]) { $0[0].groupNorm(groups: 2, weight: $0[1], bias: $0[2], silu: true) }
        // Without a graph the fused in-place path gives the composite's values.
        let fused = GradMode.withoutGrad { g.groupNorm(groups: 2, weight: gw, bias: gb, silu: true) }
        XCTAssertLessThan(maxAbsDiff(fused, g.groupNorm(groups: 2, weight: gw, bias: gb).silu()), 1e-6)
        XCTAssertLessThan(maxAbsDiff(GradMode.withoutGrad { g.groupNorm(groups: 4) }, g.groupNorm(groups: 4)), 1e-6)
    }

    func testLinearAndMatmul() {
        let x = randomTensor([2, 3, 5], seed: 14), w = randomTensor([4, 5], seed: 15), b = randomTensor([4], seed: 16)
        check([x, w, b]) { $0[0].linear($0[1], $0[2]) }
        check([x, w]) { $0[0].linear($0[1]) }
        let m = randomTensor([5, 6], seed: 17)
        check([x, m]) { $0[0].matmul($0[1]) }
        let p = randomTensor([2, 3, 5, 4], seed: 18), q = randomTensor([2, 3, 4, 6], seed: 19)
        check([p, q]) { $0[0].matmul($0[1]) }
        check([p, q]) { $0[0].matmul($0[1].transpose(2, 3).contiguous().transpose(2, 3)) }
        // A linear over a concatenation, without forming it (linear2 of the single-stream block):
        // its gradients, and its values equal to concat + linear.
        let x2 = randomTensor([2, 3, 7], seed: 24), w2 = randomTensor([4, 12], seed: 25)
        check([x, x2, w2, b]) { Tensor.linear(concatenating: [$0[0], $0[1]], $0[2], $0[3]) }
        check([x, x2, w2]) { Tensor.linear(concatenating: [$0[0], $0[1]], $0[2]) }
        let fused = Tensor.linear(concatenating: [x, x2], w2, b), plain = Tensor.concat([x, x2], axis: -1).linear(w2, b)
        XCTAssertLessThan(maxAbsDiff(fused, plain), 1e-5)
    }

    func testShapeOps() {
        let a = randomTensor([2, 3, 4], seed: 20), b = randomTensor([2, 2, 4], seed: 21)
        check([a, b]) { Tensor.concat([$0[0], $0[1]], axis: 1) * 1.5 }
        check([a]) { let p = $0[0].split([1, 2], axis: 1); return p[1] * p[1].sum() + p[0].sum() }
        check([a]) { let c = $0[0].chunk(2, axis: 2); return c[0] * c[1] }
        check([a]) { $0[0].permute([2, 0, 1]).reshape([4, 6]) * Tensor((0..<6).map(Float.init), shape: [6]) }
        check([a]) { $0[0].transpose(0, 2).slice(axis: 1, start: 1, length: 2).contiguous() }
        check([a]) { $0[0].reshape([6, -1]).unsqueeze(0).squeeze(0) }
        let table = randomTensor([5, 3], seed: 22)
        check([table]) { Tensor.embedding($0[0], indices: [1, 4, 1, 0], indicesShape: [2, 2]) }
        let v = randomTensor([1, 2, 2, 2, 3], seed: 23)
        check([v]) { $0[0].upsampleNearest(scale: (2, 2, 2)) }
        check([v]) { $0[0].upsampleNearest(scale: (1, 3, 2)) }
        check([v]) { $0[0].causalUpsampleNearest(scale: (2, 2, 2)) }
        // Causal: frame 0 in space only, then the rest by all factors (the VAE's former concat).
        let first = v.slice(axis: 2, start: 0, length: 1).upsampleNearest(scale: (1, 2, 3))
        let rest = v.slice(axis: 2, start: 1, length: 1).upsampleNearest(scale: (2, 2, 3))
        XCTAssertEqual(v.causalUpsampleNearest(scale: (2, 2, 3)).scalars, Tensor.concat([first, rest], axis: 2).scalars)
        XCTAssertEqual(v.causalUpsampleNearest(scale: (1, 2, 2)).scalars, v.upsampleNearest(scale: (1, 2, 2)).scalars)
    }

    /// Several (overlapping) slices of one tensor add their gradients into one buffer in place;
    /// a gradient that an op hands to two inputs (add) must not be written through: here x's and
    /// y's gradients both start as the one tensor add's rule returns.
    func testSlicesAccumulateWithoutTouchingSharedGradients() {
        let x = randomTensor([2, 5, 4], seed: 30), y = randomTensor([2, 5, 4], seed: 31)
        check([x, y]) {
            // Created before h, so their rules run after add's: x and y then still hold the
            // tensor add returned for both when x's slices add into x's gradient.
            let early = $0[1].sum() * 3 + $0[0].slice(axis: 2, start: 1, length: 3).sum() * $0[0].slice(axis: 1, start: 4, length: 1).sum()
            let h = $0[0] + $0[1]
            let a = h.slice(axis: 1, start: 0, length: 2), b = h.slice(axis: 1, start: 2, length: 2), c = h.slice(axis: 1, start: 1, length: 2)
            return a * b + c * 2 + h.slice(axis: 1, start: 3, length: 2) * 0.5 + early
        }
    }

    func testRotary() {
        let x = randomTensor([2, 6, 2, 8], seed: 24)
        let (c, s) = RoPE3D.frequencies(grid: (1, 2, 3), dims: [2, 2, 4])
        check([x]) { $0[0].applyRotary(cos: c, sin: s) }
        // Tables for the first 6 of 9 tokens (video before text): those rotate, the rest pass through.
        let y = randomTensor([2, 9, 2, 8], seed: 26)
        check([y]) { $0[0].applyRotary(cos: c, sin: s) * 1.5 }
        let prefix = Tensor.concat([y.slice(axis: 1, start: 0, length: 6).applyRotary(cos: c, sin: s), y.slice(axis: 1, start: 6, length: 3)], axis: 1)
        XCTAssertEqual(y.applyRotary(cos: c, sin: s).scalars, prefix.scalars)
    }

    func testAttention() {
        FlashAttention.blockQ = 3; FlashAttention.blockK = 4
        defer { FlashAttention.blockQ = 256; FlashAttention.blockK = 256 }
        let q = randomTensor([2, 2, 7, 4], seed: 25), k = randomTensor([2, 2, 9, 4], seed: 26), v = randomTensor([2, 2, 9, 4], seed: 27)
        check([q, k, v]) { Tensor.scaledDotProductAttention($0[0], $0[1], $0[2]) }
        // Batch 0 keeps 6 of 9 keys (a whole block of 4 masked in the middle), batch 1 keeps 2.
        let mask = Tensor([1, 1, 0, 0, 0, 0, 1, 1, 1,  0, 1, 0, 0, 0, 0, 0, 0, 1], shape: [2, 9])
        check([q, k, v]) { Tensor.scaledDotProductAttention($0[0], $0[1], $0[2], keyMask: mask) }
    }

    func testConv3d() {
        let x = randomTensor([1, 2, 4, 5, 4], seed: 28), w = randomTensor([3, 2, 3, 3, 3], seed: 29, std: 0.3)
        let b = randomTensor([3], seed: 30)
        // im2col (padding read through index maps) and the direct kernels (on a padded copy).
        let saved = Conv3dDirect.maxChannels
        defer { Conv3dDirect.maxChannels = saved }
        for maxChannels in [0, 64] {
            Conv3dDirect.maxChannels = maxChannels
            check([x, w, b]) { $0[0].conv3d($0[1], bias: $0[2], padding: .causal(kernel: (3, 3, 3))) }
            check([x, w]) { $0[0].conv3d($0[1], padding: .causal(kernel: (3, 3, 3), mode: .zeros)) }
            check([x, w, b]) { $0[0].conv3d($0[1], bias: $0[2], padding: Conv3dPadding(front: 1, back: 2, height: 2, width: 3, mode: .replicate)) }
        }
        check([x, w, b]) { $0[0].conv3d($0[1], bias: $0[2], stride: (1, 2, 2), padding: Conv3dPadding(front: 2, height: 1, width: 1)) }
        check([x, w, b]) { $0[0].conv3d($0[1], bias: $0[2], stride: (2, 2, 3), padding: Conv3dPadding(front: 2, height: 2, width: 3, mode: .replicate)) }
        let pw = randomTensor([3, 2, 1, 2, 2], seed: 31)
        check([x, pw, b]) { $0[0].slice(axis: 3, start: 0, length: 4).conv3d($0[1], bias: $0[2], stride: (1, 2, 2)) }
        check([x]) { $0[0].pad3d(Conv3dPadding(front: 2, back: 1, height: 1, width: 2, mode: .replicate)) }
    }

    /// The checker itself must be able to fail: a gradient scaled by a wrong factor is caught.
    func testGradCheckDetectsWrongGradient() {
        let a = randomTensor([4], seed: 32)
        let failures = gradCheck([a]) { t in
            // d/dx of 3*x is 3; present it as x*3 computed outside the graph plus a graph of x*2.
            let wrong = t[0] * 2
            return wrong + GradMode.withoutGrad { t[0].detached() * 1 }
        }
        XCTAssertFalse(failures.isEmpty, "gradCheck accepted a gradient that is off by a third")
    }
}
