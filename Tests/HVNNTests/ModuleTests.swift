import HVNN
import HVTensor
import XCTest
import _HVTestSupport

final class Block: Module {
    let img_mod: Linear
    let img_norm1: LayerNorm
    let img_attn_q_norm: RMSNorm
    init(rng: inout HVRandom) {
        img_mod = Linear(4, 24, rng: &rng)
        img_norm1 = LayerNorm(4, affine: false)
        img_attn_q_norm = RMSNorm(2)
    }
}

final class Net: Module {
    let double_blocks: [Block]
    let final_layer: Linear
    let maybe: Linear?
    init(rng: inout HVRandom) {
        double_blocks = [Block(rng: &rng), Block(rng: &rng)]
        final_layer = Linear(zeroed: 4, 8, bias: false)
        maybe = nil
    }
}

final class ModuleTests: XCTestCase {
    func testDottedPathsFollowPropertyNames() {
        var rng = HVRandom(seed: 1)
        let net = Net(rng: &rng)
        let names = net.namedParameters().map(\.0)
        XCTAssertEqual(names, [
            "double_blocks.0.img_mod.weight", "double_blocks.0.img_mod.bias", "double_blocks.0.img_attn_q_norm.weight",
            "double_blocks.1.img_mod.weight", "double_blocks.1.img_mod.bias", "double_blocks.1.img_attn_q_norm.weight",
            "final_layer.weight",
        ])
        XCTAssertEqual(net.parameterCount, 2 * (24 * 4 + 24 + 2) + 32)
        net.nameParameters()
        XCTAssertEqual(net.final_layer.weight.name, "final_layer.weight")
        XCTAssertTrue(net.final_layer.weight.requiresGrad)
    }

    /// AdamW against a float64 transcription of torch.optim.AdamW's update.
    func testAdamWMatchesReference() {
        let p = Tensor([0.5, -1.0, 2.0], shape: [3], requiresGrad: true)
        let opt = AdamW(lr: 0.1, weightDecay: 0.01)
        var ref: [Double] = [0.5, -1.0, 2.0], m = [0.0, 0, 0], v = [0.0, 0, 0]
        for step in 1...3 {
            p.zeroGrad()
            (p * p * p).sum().backward()  // grad 3p^2
            let g = ref.map { 3 * $0 * $0 }
            opt.update([("p", p)])
            for i in 0..<3 {
                ref[i] *= 1 - 0.1 * 0.01
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i]
                let mh = m[i] / (1 - pow(0.9, Double(step))), vh = v[i] / (1 - pow(0.999, Double(step)))
                ref[i] -= 0.1 * mh / (vh.squareRoot() + 1e-8)
            }
        }
        for (a, b) in zip(p.scalars, ref) { XCTAssertEqual(Double(a), b, accuracy: 1e-5) }
    }

    func testClipGradNorm() {
        let a = Tensor([3, 0], shape: [2], requiresGrad: true), b = Tensor([4], shape: [1], requiresGrad: true)
        (a * Tensor([1, 0], shape: [2])).sum().backward()
        (b * 1).sum().backward()
        a.grad = Tensor([3, 0], shape: [2]); b.grad = Tensor([4], shape: [1])
        XCTAssertEqual(clipGradNorm([a, b], maxNorm: 1), 5, accuracy: 1e-6)
        XCTAssertEqual(a.grad!.scalars[0], 0.6, accuracy: 1e-5)
        XCTAssertEqual(b.grad!.scalars[0], 0.8, accuracy: 1e-5)
    }

    func testSchedules() {
        let s = LRSchedule(kind: .cosine, base: 1, warmupSteps: 10, totalSteps: 110, minRatio: 0)
        XCTAssertEqual(s.lr(at: 0), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.lr(at: 9), 1, accuracy: 1e-6)
        XCTAssertEqual(s.lr(at: 60), 0.5, accuracy: 1e-5)
        XCTAssertEqual(s.lr(at: 110), 0, accuracy: 1e-6)
        XCTAssertEqual(LRSchedule(kind: .constant, base: 2).lr(at: 1000), 2)
    }
}
