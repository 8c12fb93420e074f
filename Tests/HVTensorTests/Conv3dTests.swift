import HVTensor
import XCTest
import _HVTestSupport

final class Conv3dTests: XCTestCase {
    /// Naive float64 loop over a padded input (zeros padding given explicitly).
    func naiveConv(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: (Int, Int, Int)) -> Tensor {
        let (N, Ci, T, H, W) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4])
        let (Co, kt, kh, kw) = (w.shape[0], w.shape[2], w.shape[3], w.shape[4])
        let To = (T - kt) / stride.0 + 1, Ho = (H - kh) / stride.1 + 1, Wo = (W - kw) / stride.2 + 1
        let xs = x.scalars, ws = w.scalars, bs = b?.scalars
        var out = [Float]()
        for n in 0..<N { for co in 0..<Co { for t in 0..<To { for h in 0..<Ho { for ww in 0..<Wo {
            var s = Double(bs?[co] ?? 0)
            for ci in 0..<Ci { for a in 0..<kt { for c in 0..<kh { for d in 0..<kw {
                let xi = (((n * Ci + ci) * T + t * stride.0 + a) * H + h * stride.1 + c) * W + ww * stride.2 + d
                let wi = (((co * Ci + ci) * kt + a) * kh + c) * kw + d
                s += Double(xs[xi]) * Double(ws[wi])
            }}}}
            out.append(Float(s))
        }}}}}
        return Tensor(out, shape: [N, Co, To, Ho, Wo])
    }

    func testMatchesNaiveLoop() {
        let x = randomTensor([2, 3, 5, 6, 7], seed: 1), w = randomTensor([4, 3, 3, 3, 2], seed: 2), b = randomTensor([4], seed: 3)
        for stride in [(1, 1, 1), (2, 1, 2), (1, 2, 2)] {
            let fast = x.conv3d(w, bias: b, stride: stride)
            let ref = naiveConv(x, w, b, stride: stride)
            XCTAssertEqual(fast.shape, ref.shape)
            XCTAssertLessThan(maxAbsDiff(fast, ref), 1e-4, "stride \(stride)")
        }
        // Padding is the same as convolving an explicitly padded input.
        let pad = Conv3dPadding(front: 2, back: 0, height: 1, width: 1, mode: .replicate)
        let padded = x.pad3d(pad)
        XCTAssertEqual(padded.shape, [2, 3, 7, 8, 9])
        XCTAssertLessThan(maxAbsDiff(x.conv3d(w, bias: b, padding: pad), naiveConv(padded, w, b, stride: (1, 1, 1))), 1e-4)
    }

    /// im2col reads the padding through index maps, in chunks of output rows that need not
    /// be whole frames: the same as a naive loop over an explicitly padded input, forward and
    /// input gradient (against the direct kernels' padded path), for any chunk size.
    func testIm2colPaddingAndRowChunks() {
        let x = randomTensor([2, 3, 4, 5, 7], seed: 6), w = randomTensor([4, 3, 3, 3, 3], seed: 7), b = randomTensor([4], seed: 8)
        let savedBudget = Tensor.im2colBudget, savedDirect = Conv3dDirect.maxChannels
        defer { Tensor.im2colBudget = savedBudget; Conv3dDirect.maxChannels = savedDirect }
        let pads = [Conv3dPadding.causal(kernel: (3, 3, 3)), .causal(kernel: (3, 3, 3), mode: .zeros),
                    Conv3dPadding(front: 1, back: 2, height: 2, width: 3, mode: .replicate)]
        for pad in pads {
            for stride in [(1, 1, 1), (2, 2, 3)] {
                let ref = naiveConv(x.pad3d(pad), w, b, stride: stride)
                // One row, 3 rows (chunks cross frame borders), whole input.
                for budget in [1, 81 * 3 * 7, 1 << 24] {
                    Tensor.im2colBudget = budget
                    Conv3dDirect.maxChannels = 0
                    let y = x.conv3d(w, bias: b, stride: stride, padding: pad)
                    XCTAssertEqual(y.shape, ref.shape)
                    XCTAssertLessThan(maxAbsDiff(y, ref), 1e-4, "\(pad) stride \(stride) budget \(budget)")
                }
            }
            // Input gradient through the maps (replicated borders summed) vs pad3d's backward.
            var dxs: [Tensor] = []
            for maxChannels in [0, 64] {
                Conv3dDirect.maxChannels = maxChannels
                Tensor.im2colBudget = 81 * 2 * 7
                let xv = x.copy()
                xv.requiresGrad = true
                let y = xv.conv3d(w, bias: b, padding: pad)
                (y * randomTensor(y.shape, seed: 9)).sum().backward()
                dxs.append(xv.grad!)
            }
            XCTAssertLessThan(maxAbsDiff(dxs[0], dxs[1]), 1e-4, "dx \(pad)")
        }
    }

    func testReplicatePaddingValues() {
        let x = Tensor([1, 2, 3, 4], shape: [1, 1, 2, 1, 2])
        let p = x.pad3d(Conv3dPadding(front: 2, back: 0, height: 0, width: 1, mode: .replicate))
        // frames: f0, f0, f0, f1 ; each row [a, a, b, b]
        XCTAssertEqual(p.scalars, [1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4])
        let z = x.pad3d(Conv3dPadding(front: 1, width: 1))
        XCTAssertEqual(z.scalars, [0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0])
    }

    /// Causal padding: changing frame t+1 (and later) never changes outputs at frames <= t.
    func testCausalPaddingNeverSeesTheFuture() {
        let x = randomTensor([1, 2, 6, 4, 4], seed: 4), w = randomTensor([3, 2, 3, 3, 3], seed: 5)
        for mode in [Conv3dPadding.Mode.replicate, .zeros] {
            let pad = Conv3dPadding.causal(kernel: (3, 3, 3), mode: mode)
            let base = x.conv3d(w, padding: pad)
            XCTAssertEqual(base.shape, [1, 3, 6, 4, 4])
            for t in 0..<5 {
                let y = x.copy()
                // Perturb every frame after t.
                for c in 0..<2 { for f in (t + 1)..<6 { for i in 0..<16 { y.pointer[(c * 6 + f) * 16 + i] += 10 } } }
                let out = y.conv3d(w, padding: pad)
                let a = base.slice(axis: 2, start: 0, length: t + 1).contiguous()
                let b = out.slice(axis: 2, start: 0, length: t + 1).contiguous()
                XCTAssertEqual(a.scalars, b.scalars, "frame <= \(t) changed when frames > \(t) changed (\(mode))")
                let later = out.slice(axis: 2, start: t + 1, length: 1).contiguous()
                XCTAssertNotEqual(later.scalars, base.slice(axis: 2, start: t + 1, length: 1).contiguous().scalars)
            }
        }
    }

    /// The direct kernels (narrow stride-1 layers) against im2col + sgemm, forward and both
    /// gradients, on widths that are not multiples of the 16-pixel row segment, channel counts
    /// that are not multiples of the 16/32-channel blocks, 3x3 and 1x1 spatial kernels of
    /// several temporal sizes, and batch 2; both register tilings of the direct kernels (the
    /// AVX2 one only where the CPU has AVX2 + FMA: elsewhere both runs take the 16-float tiles).
    func testDirectKernelsMatchIm2col() {
        let cases: [(x: [Int], w: [Int])] = [
            ([2, 3, 5, 6, 37], [20, 3, 3, 3, 3]), ([1, 17, 3, 5, 16], [9, 17, 3, 3, 3]),
            ([1, 4, 2, 3, 5], [5, 4, 1, 1, 1]), ([2, 6, 4, 7, 19], [3, 6, 2, 3, 3]), ([1, 40, 3, 4, 21], [33, 40, 3, 3, 3]),
            ([1, 32, 2, 2, 2], [32, 32, 1, 1, 1]), ([1, 16, 2, 2, 2], [16, 16, 3, 3, 3]),
            ([1, 16, 3, 9, 32], [64, 16, 3, 3, 3]), ([1, 64, 2, 4, 7], [24, 64, 3, 3, 3]), ([1, 8, 2, 3, 1], [16, 8, 3, 3, 3]),
        ]
        let saved = Conv3dDirect.maxChannels
        defer { Conv3dDirect.maxChannels = saved; Conv3dDirect.setAVX2Tiles(-1) }
        for (k, c) in cases.enumerated() {
            let x = randomTensor(c.x, seed: UInt64(10 + k)), w = randomTensor(c.w, seed: UInt64(20 + k))
            let b = randomTensor([c.w[0]], seed: UInt64(30 + k))
            var results: [[Tensor]] = []
            for (maxChannels, tiles) in [(0, -1), (64, 0), (64, 1)] {
                Conv3dDirect.maxChannels = maxChannels
                Conv3dDirect.setAVX2Tiles(tiles)
                let (xv, wv, bv) = (x.copy(), w.copy(), b.copy())
                for t in [xv, wv, bv] { t.requiresGrad = true }
                let y = xv.conv3d(wv, bias: bv, padding: .causal(kernel: (c.w[2], c.w[3], c.w[4])))
                let probe = randomTensor(y.shape, seed: UInt64(40 + k))
                (y * probe).sum().backward()
                results.append([y, xv.grad!, wv.grad!, bv.grad!])
            }
            for direct in 1...2 {
                for (name, (a, d)) in zip(["y", "dx", "dw", "db"], zip(results[0], results[direct])) {
                    XCTAssertEqual(a.shape, d.shape)
                    XCTAssertLessThan(maxAbsDiff(a, d), 2e-4, "case \(k) \(name) tiles \(direct == 1 ? "16-float" : "AVX2")")
                }
            }
        }
    }
}
