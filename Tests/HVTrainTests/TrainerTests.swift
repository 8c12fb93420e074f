import Foundation
import HVModel
import HVNN
import HVTensor
import HVTrain
import XCTest
import _HVTestSupport

/// The repository root (tests run from a source checkout).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

final class TrainerTests: XCTestCase {
    func tinyRun(steps: Int, seed: UInt64 = 0) throws -> RunConfig {
        var cfg = try RunConfig.load(path: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path)
        cfg.train.steps = steps
        cfg.train.seed = seed
        return cfg
    }

    /// The quick-start config learns: mean loss of the last 20 steps is at most half of the first 20's.
    func testLossHalvesOnSyntheticLatents() throws {
        let cfg = try tinyRun(steps: 150)
        let trainer = try Trainer(config: cfg)
        let losses = (0..<150).map { _ in try! trainer.trainStep().loss }
        let first = losses.prefix(20).reduce(0, +) / 20, last = losses.suffix(20).reduce(0, +) / 20
        XCTAssertLessThan(last, first / 2, "loss went from \(first) to \(last)")
        XCTAssert(losses.allSatisfy { $0.isFinite })
    }

    /// Same seed, same losses and parameters, bit for bit; another seed differs.
    func testSameSeedIsBitExact() throws {
        let cfg = try tinyRun(steps: 6)
        let a = try Trainer(config: cfg), b = try Trainer(config: cfg)
        let la = try (0..<6).map { _ in try a.trainStep().loss }, lb = try (0..<6).map { _ in try b.trainStep().loss }
        XCTAssertEqual(la, lb)
        for ((n, p), (_, q)) in zip(a.parameters, b.parameters) { XCTAssertEqual(p.scalars, q.scalars, n) }
        let c = try Trainer(config: try tinyRun(steps: 6, seed: 1))
        XCTAssertNotEqual(try (0..<6).map { _ in try c.trainStep().loss }, la)
    }

    /// train.precision bf16 (bf16 GEMM operands, fp32 sums): the tiny run learns as in fp32 —
    /// the loss halves, and the losses stay within a few percent of fp32's — yet differ from them
    /// (the bf16 kernel ran), and it is bit-exact run to run.
    func testBF16PrecisionTrainsLikeFP32() throws {
        try XCTSkipUnless(MatmulPrecision.bf16Available, "this CPU has no AVX512-BF16")
        defer { MatmulPrecision.current = .fp32 }
        var cfg = try tinyRun(steps: 150)
        let fp32 = try Trainer(config: cfg)
        let l32 = try (0..<150).map { _ in try fp32.trainStep().loss }
        cfg.train.precision = "bf16"
        let a = try Trainer(config: cfg)
        XCTAssertEqual(MatmulPrecision.current, .bf16)
        let l16 = try (0..<150).map { _ in try a.trainStep().loss }
        XCTAssertNotEqual(l16, l32)
        let first = l16.prefix(20).reduce(0, +) / 20, last = l16.suffix(20).reduce(0, +) / 20
        XCTAssertLessThan(last, first / 2, "bf16 loss went from \(first) to \(last)")
        let last32 = l32.suffix(20).reduce(0, +) / 20
        XCTAssertEqual(last, last32, accuracy: 0.05 * last32, "bf16 \(last) vs fp32 \(last32) over the last 20 steps")
        let b = try Trainer(config: cfg)
        XCTAssertEqual(try (0..<10).map { _ in try b.trainStep().loss }, Array(l16.prefix(10)))
        cfg.train.precision = "fp16"
        XCTAssertThrowsError(try cfg.validate(file: "run.yaml")) { XCTAssert("\($0)".contains("train.precision"), "\($0)") }
    }

    /// Gradient accumulation: 1 x 8 samples and 4 x 2 samples give the same update (up to fp32 rounding).
    func testGradientAccumulationMatchesFullBatch() throws {
        var cfg = try tinyRun(steps: 2)
        cfg.data.image_ratio = 0
        let full = try Trainer(config: cfg)
        cfg.train.grad_accum = 4
        let acc = try Trainer(config: cfg)
        for _ in 0..<2 {
            let l1 = try full.trainStep().loss, l2 = try acc.trainStep().loss
            XCTAssertEqual(l1, l2, accuracy: 1e-5)
        }
        var worst: Float = 0
        for ((_, p), (_, q)) in zip(full.parameters, acc.parameters) { worst = max(worst, maxAbsDiff(p, q)) }
        XCTAssertLessThan(worst, 1e-5)
    }

    func testDataOrderIsAPermutationPerEpochAndResumable() {
        var o = DataOrder(count: 10, seed: 3)
        let epoch0 = o.next(10)
        XCTAssertEqual(epoch0.sorted(), Array(0..<10))
        let next = o.next(4)
        var resumed = DataOrder(count: 10, seed: 3, epoch: o.epoch, offset: o.offset)
        XCTAssertEqual(o.next(7), resumed.next(7))
        XCTAssertEqual(next.count, 4)
    }

    func testSyntheticCaptionsDescribeTheClip() {
        let ds = SyntheticLatents(count: 10, channels: 16, frames: 3, height: 8, width: 8, seed: 1)
        for i in 0..<10 {
            let item = ds.item(i)
            XCTAssertEqual(item.caption, "a \(SyntheticLatents.colors[item.color]) \(SyntheticLatents.shapes[item.shape]) moving \(SyntheticLatents.directions[item.direction])")
            // The shape's centre of mass moves in the captioned direction.
            func centroid(_ t: Int) -> (Float, Float) {
                var sx: Float = 0, sy: Float = 0, sw: Float = 0
                let col = ds.palette[item.color]
                for y in 0..<8 { for x in 0..<8 {
                    var a: Float = 0
                    for c in 0..<16 { a += item.latent.pointer[((c * 3 + t) * 8 + y) * 8 + x] * col[c] }
                    let w: Float = a > 4 ? a : 0  // object pixels: a ~ 0.8..1 x |colour|^2 = 10.24; background ~ 0
                    sx += w * Float(x); sy += w * Float(y); sw += w
                }}
                return (sx / sw, sy / sw)
            }
            let (x0, y0) = centroid(0), (x2, y2) = centroid(2)
            switch item.direction {
            case 0: XCTAssertLessThan(x2, x0 - 0.5)
            case 1: XCTAssertGreaterThan(x2, x0 + 0.5)
            case 2: XCTAssertLessThan(y2, y0 - 0.5)
            default: XCTAssertGreaterThan(y2, y0 + 0.5)
            }
        }
    }

    func testFlowMatchingShiftAndInterpolation() {
        XCTAssertEqual(FlowMatching.shift(0.5, 7), 7 * 0.5 / (1 + 6 * 0.5), accuracy: 1e-12)
        XCTAssertEqual(FlowMatching.shift(1, 7), 1)
        let s = FlowMatching.samplingSigmas(steps: 4, shift: 1)
        XCTAssertEqual(s, [1, 0.75, 0.5, 0.25, 0])
        let x0 = Tensor([1, 2], shape: [1, 2]), n = Tensor([3, -1], shape: [1, 2])
        let (xt, v) = FlowMatching.noisedInputs(x0: x0, noise: n, sigmas: [0.25])
        XCTAssertEqual(xt.scalars, [0.25 * 3 + 0.75 * 1, 0.25 * -1 + 0.75 * 2])
        XCTAssertEqual(v.scalars, [2, -3])
    }

    func testConfigErrorsNameFileAndField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hv-config-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func expectError(_ yaml: String, _ fragment: String, line: UInt = #line) {
            let p = dir.appendingPathComponent("run.yaml").path
            try? yaml.write(toFile: p, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try RunConfig.load(path: p), line: line) { e in
                let text = "\(e)"
                XCTAssert(text.contains(p) && text.contains(fragment), "error '\(text)' should name the file and '\(fragment)'", line: line)
            }
        }
        expectError("train:\n  stepz: 3\n", "train.stepz")
        expectError("train:\n  batch_size: 8\n  grad_accum: 3\n", "train.grad_accum")
        expectError("model:\n  hidden_size: 64\n  heads_num: 3\n", "model.heads_num")
        expectError("train:\n  steps: many\n", "train.steps")
        expectError("train: [1, 2\n", "not valid YAML")
        expectError("model: nowhere.yaml\n", "model")
        expectError("train:\n  pipeline_parallel: 61\n", "train.pipeline_parallel")     // the default model has 60 blocks
        XCTAssertNoThrow(try { () throws -> Void in
            let p = dir.appendingPathComponent("cp-pp.yaml").path
            try "version: 1\ntrain:\n  pipeline_parallel: 2\n  context_parallel: 2\n".write(toFile: p, atomically: true, encoding: .utf8)
            _ = try RunConfig.load(path: p)
        }(), "cp x pp is a valid mesh")
        expectError("train:\n  batch_size: 8\n  pipeline_parallel: 2\n  grad_accum: 2\n", "use train.micro_batches")
        expectError("train:\n  batch_size: 8\n  micro_batches: 3\n", "train.micro_batches")
        // Checked before any field that divides by it (the stage's batch size did).
        expectError("train:\n  grad_accum: 0\nstages:\n  - name: video\n    steps: 2\n    batch_size: 4\n", "train.grad_accum")
        expectError("model:\n  refiner_depth: -1\n", "model.refiner_depth")
        expectError("model:\n  rope_theta: 0\n", "model.rope_theta")
        // Stages: each of these trapped, hung or was silently ignored before.
        let big = Int.max
        expectError("stages:\n  - steps: \(big)\n  - steps: \(big)\n", "stages.1.steps")
        expectError("stages:\n  - steps: 2\n    data: 7\n", "stages.0.data")
        expectError("stages:\n  - steps: 2\n    data:\n      speed: 0\n", "stages.0.data.speed")
        expectError("stages:\n  - steps: 2\n    data:\n      object_size: -3\n", "stages.0.data.object_size")
        expectError("stages:\n  - steps: 2\n    batch_size: 1000000000000\n", "stages.0.batch_size")
        expectError("train:\n  batch_size: 1000000000000\n", "train.batch_size")
    }

    /// A loss that stops being finite ends training with an error naming the step (instead of
    /// training on, and checkpointing, NaN weights).
    func testNonFiniteLossStopsTraining() throws {
        var cfg = try tinyRun(steps: 8)
        cfg.train.lr = 1e30
        cfg.train.warmup_steps = 0
        let trainer = try Trainer(config: cfg)
        var message: String?
        for _ in 0..<8 where message == nil {
            do { _ = try trainer.trainStep() } catch { message = "\(error)" }
        }
        let text = try XCTUnwrap(message, "a learning rate of 1e30 should make the loss non-finite within 8 steps")
        XCTAssert(text.contains("the loss of step") && text.contains("training stopped"), text)
    }

    /// VAE run configs: every field a run divides by or counts with is checked up front, naming
    /// the file and the field (each of these trapped before).
    func testVAEConfigErrorsNameFileAndField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hv-vae-config-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = "vae:\n  block_out_channels: [8, 8]\n  norm_num_groups: 4\n  spatial_compression: 2\n  temporal_compression: 2\n"
        let p = dir.appendingPathComponent("vae-run.yaml").path
        try (base + "data:\n  seed: 0\n  size: 8\n  frames: 3\n  count: 4\n  held_out: 1\n").write(toFile: p, atomically: true, encoding: .utf8)
        var good = try VAERunConfig.load(path: p)
        XCTAssertNoThrow(try good.validate(file: p))
        let data = "data:\n  seed: 0\n  size: 8\n  frames: 3\n  count: 4\n  held_out: 1\n"
        func vae(groups: Int = 4, layers: Int = 1, widths: String = "[8, 8]") -> String {
            "vae:\n  block_out_channels: \(widths)\n  norm_num_groups: \(groups)\n  layers_per_block: \(layers)\n  spatial_compression: 2\n  temporal_compression: 2\n"
        }
        for (text, field) in [(base + data + "train:\n  log_every: 0\n", "train.log_every"),
                              (base + data + "checkpoint:\n  keep: -1\n", "checkpoint.keep"),
                              (base + data + "train:\n  steps: -1\n", "train.steps"),
                              (base + data + "train:\n  lr: 0\n", "train.lr"),
                              (base + "data:\n  seed: 0\n  size: 8\n  frames: 3\n  count: 4\n  held_out: -1\n", "data.held_out"),
                              (base + "data:\n  seed: 0\n  size: 8\n  frames: 3\n  count: 0\n  held_out: 0\n", "data.count"),
                              (vae(groups: 0) + data, "vae.norm_num_groups"),
                              (vae(layers: -1) + data, "vae.layers_per_block"),
                              (vae(groups: 1, widths: "[8, 0]") + data, "vae.block_out_channels")] {
            try text.write(toFile: p, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try VAERunConfig.load(path: p), "\(field):\n\(text)") { e in
                XCTAssert("\(e)".contains(p) && "\(e)".contains(field), "error '\(e)' should name the file and \(field)")
            }
        }
        // Command-line overrides are checked too (train-vae --steps, launch --batch-size).
        good.train.batch_size = 0
        XCTAssertThrowsError(try good.validate(file: p)) { XCTAssert("\($0)".contains("train.batch_size"), "\($0)") }
    }
}
