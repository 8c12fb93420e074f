import HVModel
import HVNN
import HVTensor
import XCTest
import _HVTestSupport

enum Tiny {
    static var config: DiTConfig {
        var c = DiTConfig()
        c.hidden_size = 32; c.heads_num = 2; c.rope_dim_list = [4, 6, 6]
        c.mm_double_blocks_depth = 1; c.mm_single_blocks_depth = 1
        c.text_states_dim = 12; c.text_states_dim_2 = 8; c.refiner_depth = 1
        c.in_channels = 4; c.out_channels = 4
        return c
    }

    static func inputs(_ c: DiTConfig, B: Int = 2, T: Int = 2, H: Int = 4, W: Int = 6, L: Int = 5, seed: UInt64 = 3) -> DiTInputs {
        var rng = HVRandom(seed: seed)
        var mask = [Float](repeating: 1, count: B * L)
        if B > 1 { for j in 3..<L { mask[L + j] = 0 } }  // second sample has 3 real text tokens
        return DiTInputs(x: Tensor.randn([B, c.in_channels, T, H, W], rng: &rng), t: (0..<B).map { Float(250 + 500 * $0) },
                         text_states: Tensor.randn([B, L, c.text_states_dim], rng: &rng), text_mask: Tensor(mask, shape: [B, L]),
                         text_states_2: Tensor.randn([B, c.text_states_dim_2], rng: &rng),
                         guidance: c.guidance_embed ? [Float](repeating: 6000, count: B) : nil)
    }

    /// Replace every parameter (including the zero-initialised ones) by small random values so
    /// that every path carries gradient.
    static func randomize(_ model: Module, seed: UInt64, std: Float = 0.2) {
        var rng = HVRandom(seed: seed)
        for p in model.parameters() { p.assign(Tensor.randn(p.shape, std: std, rng: &rng)) }
    }
}

final class DiTTests: XCTestCase {
    func testOfficialParameterNamesAndShapes() {
        var c = Tiny.config
        c.guidance_embed = true
        let model = HunyuanDiT(config: c, seed: 1)
        let params = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.0, $0.1.shape) })
        let H = 32, D = 16, M = 128
        let expected: [String: [Int]] = [
            "img_in.proj.weight": [H, 4, 1, 2, 2], "img_in.proj.bias": [H],
            "txt_in.input_embedder.weight": [H, 12], "txt_in.t_embedder.mlp.0.weight": [H, 256], "txt_in.t_embedder.mlp.2.weight": [H, H],
            "txt_in.c_embedder.linear_1.weight": [H, 12], "txt_in.c_embedder.linear_2.bias": [H],
            "txt_in.individual_token_refiner.blocks.0.norm1.weight": [H],
            "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight": [3 * H, H],
            "txt_in.individual_token_refiner.blocks.0.self_attn_proj.weight": [H, H],
            "txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight": [4 * H, H],
            "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight": [2 * H, H],
            "time_in.mlp.0.weight": [H, 256], "time_in.mlp.2.bias": [H],
            "vector_in.in_layer.weight": [H, 8], "vector_in.out_layer.weight": [H, H],
            "guidance_in.mlp.0.weight": [H, 256],
            "double_blocks.0.img_mod.linear.weight": [6 * H, H], "double_blocks.0.img_attn_qkv.weight": [3 * H, H],
            "double_blocks.0.img_attn_q_norm.weight": [D], "double_blocks.0.img_attn_k_norm.weight": [D],
            "double_blocks.0.img_attn_proj.weight": [H, H], "double_blocks.0.img_mlp.fc1.weight": [M, H],
            "double_blocks.0.img_mlp.fc2.weight": [H, M], "double_blocks.0.txt_mod.linear.bias": [6 * H],
            "double_blocks.0.txt_attn_qkv.bias": [3 * H], "double_blocks.0.txt_mlp.fc2.bias": [H],
            "single_blocks.0.linear1.weight": [3 * H + M, H], "single_blocks.0.linear2.weight": [H, H + M],
            "single_blocks.0.q_norm.weight": [D], "single_blocks.0.k_norm.weight": [D], "single_blocks.0.modulation.linear.weight": [3 * H, H],
            "final_layer.linear.weight": [16, H], "final_layer.adaLN_modulation.1.weight": [2 * H, H],
        ]
        for (name, shape) in expected { XCTAssertEqual(params[name], shape, name) }
        XCTAssertNil(params["double_blocks.0.img_norm1.weight"], "img_norm1 has no affine parameters")
        XCTAssertEqual(model.parameterCount, c.parameterCount, "analytic count equals the allocated model")
        // A pipeline stage's model holds only its parts, equal to the whole model's; the other
        // parts keep names and shapes; the part counts are what each holds.
        let stage = HunyuanDiT(config: c, seed: 1, holding: { $0 == "single_blocks.0" || $0 == "final_layer" })
        let whole = Dictionary(uniqueKeysWithValues: model.namedParameters())
        var held = 0
        for (name, t) in stage.namedParameters() {
            XCTAssertEqual(t.shape, whole[name]!.shape, name)
            let kept = name.hasPrefix("single_blocks.0.") || name.hasPrefix("final_layer.")
            XCTAssertEqual(t.isMaterialized, kept, name)
            if kept { XCTAssertEqual(t.scalars, whole[name]!.scalars, name); held += t.count }
        }
        let parts = c.partParameterCounts
        XCTAssertEqual(held, parts.singleBlock + parts.finalLayer)
        XCTAssertEqual(model.double_blocks[0].parameterCount, parts.doubleBlock)
    }

    func test13BParameterCount() {
        let n = Double(DiTConfig.hunyuan13B.parameterCount)
        XCTAssertEqual(n / 12_821e6, 1, accuracy: 0.005, "HYVideo-T/2 has 12,821M parameters with guidance; got \(n / 1e6)M")
        var noG = DiTConfig.hunyuan13B
        noG.guidance_embed = false
        XCTAssertEqual(Double(noG.parameterCount) / 12_811e6, 1, accuracy: 0.005)
    }

    func testOutputShapeAndZeroInit() {
        let c = Tiny.config
        let model = HunyuanDiT(config: c, seed: 1)
        let v = GradMode.withoutGrad { model(Tiny.inputs(c)) }
        XCTAssertEqual(v.shape, [2, 4, 2, 4, 6])
        XCTAssert(v.scalars.allSatisfy { $0 == 0 }, "the final layer starts at zero")
    }

    /// Sampling (no graph) takes fused paths — GELU inside the GEMM, the modulation as the layer
    /// norm's affine for a single sample, attention reading heads in place — which must give the
    /// velocity of the recorded (training) forward, for one sample and for two.
    func testNoGradForwardMatchesRecordedForward() {
        let c = Tiny.config
        let model = HunyuanDiT(config: c, seed: 1)
        Tiny.randomize(model, seed: 9)
        XCTAssert(model.parameters().allSatisfy(\.requiresGrad))
        for B in [1, 2] {
            let inp = Tiny.inputs(c, B: B)
            let sampled = GradMode.withoutGrad { model(inp) }
            let recorded = model(inp).detached()
            let scale = recorded.scalars.map { abs($0) }.max()!
            XCTAssertGreaterThan(scale, 0.01)
            XCTAssertLessThan(maxAbsDiff(sampled, recorded) / scale, 1e-5, "B \(B)")
        }
    }

    /// Padded text tokens must not change the velocity: same prompt with more padding, same output.
    func testPaddedTextDoesNotLeak() {
        let c = Tiny.config
        let model = HunyuanDiT(config: c, seed: 1)
        Tiny.randomize(model, seed: 9)
        var a = Tiny.inputs(c, B: 1, L: 3)
        a.text_mask = Tensor(repeating: 1, shape: [1, 3])
        var b = a
        var rng = HVRandom(seed: 77)
        b.text_states = Tensor.concat([a.text_states, Tensor.randn([1, 4, c.text_states_dim], rng: &rng)], axis: 1)
        b.text_mask = Tensor([1, 1, 1, 0, 0, 0, 0], shape: [1, 7])
        let va = GradMode.withoutGrad { model(a) }, vb = GradMode.withoutGrad { model(b) }
        XCTAssertLessThan(maxAbsDiff(va, vb), 1e-5)
    }

    /// Finite differences on a sample of weights from every kind of layer, and on the input.
    func testWholeModelGradient() {
        var c = Tiny.config
        c.guidance_embed = true
        let model = HunyuanDiT(config: c, seed: 1)
        Tiny.randomize(model, seed: 5)
        let inp = Tiny.inputs(c)
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters())
        let probe = ["img_in.proj.weight", "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight",
                     "txt_in.c_embedder.linear_1.weight", "time_in.mlp.0.weight", "guidance_in.mlp.2.weight",
                     "vector_in.in_layer.weight", "double_blocks.0.img_attn_q_norm.weight", "double_blocks.0.txt_mlp.fc1.weight",
                     "double_blocks.0.img_mod.linear.weight", "single_blocks.0.linear1.weight", "single_blocks.0.k_norm.weight",
                     "final_layer.adaLN_modulation.1.weight", "final_layer.linear.bias"]
        for name in probe {
            let p = named[name]!
            let failures = gradCheck([p], eps: 1e-2, rtol: 3e-2, atol: 3e-3, maxElements: 12) { _ in
                model(inp)
            }
            XCTAssert(failures.isEmpty, "\(name): \(failures.prefix(3))")
        }
        let failures = gradCheck([inp.x], eps: 1e-2, rtol: 3e-2, atol: 3e-3, maxElements: 16) { t in
            var i = inp
            i.x = t[0]
            return model(i)
        }
        XCTAssert(failures.isEmpty, "input x: \(failures.prefix(3))")
    }

    func testRecomputeMatchesStoredActivations() {
        let c = Tiny.config
        let model = HunyuanDiT(config: c, seed: 1)
        Tiny.randomize(model, seed: 6)
        let inp = Tiny.inputs(c)
        model(inp).square().mean().backward()
        let plain = model.parameters().map { $0.grad?.scalars ?? [] }
        model.zeroGrad()
        model.recomputeBlocks = true
        model(inp).square().mean().backward()
        // Blocks' own gradients are bit-identical. vec (time_in, vector_in) feeds every block:
        // backward adds its gradient contributions one op at a time, while a recomputed block
        // first sums its own and hands back one total — the same terms grouped differently,
        // so the parameters upstream of vec may differ in the last bits.
        for (i, p) in model.parameters().enumerated() {
            let name = p.name ?? "?", g = p.grad?.scalars ?? []
            if name.hasPrefix("double_blocks.") || name.hasPrefix("single_blocks.") {
                XCTAssertEqual(g, plain[i], name)
                continue
            }
            XCTAssertEqual(g.count, plain[i].count, name)
            let scale = plain[i].map { abs($0) }.max() ?? 0
            for (a, b) in zip(g, plain[i]) { XCTAssertEqual(a, b, accuracy: 1e-6 * max(scale, 1e-30), name) }
        }
    }
}
