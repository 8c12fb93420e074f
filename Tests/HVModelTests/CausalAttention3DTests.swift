import HVModel
import HVNN
import HVTensor
import XCTest
import _HVTestSupport

/// The VAE mid-block attention (frame-causal, GroupNorm, residual): blocked kernel vs a naive
/// composite, and finite differences.
final class CausalAttention3DTests: XCTestCase {
    func testGradientAgainstNaiveAndFiniteDifferences() {
        var rng = HVRandom(seed: 4)
        let attn = CausalAttention3D(16, groups: 4, rng: &rng)
        attn.nameParameters()
        let h = randomTensor([1, 16, 2, 2, 2], seed: 6)
        let r = randomTensor([1, 16, 2, 2, 2], seed: 7)
        (attn(h) * r).sum().backward()
        let fast = attn.to_q.weight.grad!.scalars
        attn.zeroGrad()
        // naive
        let tokens = attn.group_norm(h).reshape([1, 16, 8]).transpose(1, 2)
        let q = attn.to_q(tokens), k = attn.to_k(tokens), v = attn.to_v(tokens)
        var bias = [Float](repeating: 0, count: 64)
        for i in 0..<8 { for j in 0..<8 where j >= (i / 4 + 1) * 4 { bias[i * 8 + j] = -1e9 } }
        let p = (q.matmul(k.transpose(1, 2)) * 0.25 + Tensor(bias, shape: [1, 8, 8])).softmax()
        let o = (attn.to_out[0] as! Linear)(p.matmul(v)).transpose(1, 2).reshape([1, 16, 2, 2, 2])
        ((h + o) * r).sum().backward()
        let naive = attn.to_q.weight.grad!.scalars
        var worst: Float = 0
        for (a, b) in zip(fast, naive) { worst = max(worst, abs(a - b)) }
        XCTAssertLessThan(worst, 1e-4)
        let fl = gradCheck([attn.to_q.weight], eps: 1e-3, rtol: 3e-2, atol: 1e-3, maxElements: 16) { _ in attn(h) }
        XCTAssert(fl.isEmpty, "\(fl.prefix(3))")
    }
}
