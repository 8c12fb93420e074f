import Foundation
import HVCheckpoint
import HVModel
import HVSampling
import HVTensor
import HVTrain
import XCTest
import _HVTestSupport

/// hv-sample on checkpoints made in the test run.
final class SampleTests: XCTestCase {
    var scratch: URL!
    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-sample-\(getpid())-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func run(_ tool: String, _ args: [String], timeout: TimeInterval = 120) throws -> (Int32, String) {
        let (s, o, e) = try runProcess(try locateExecutable(tool), args, timeout: timeout, cwd: repoRoot.path)
        return (s, o + e)
    }

    /// `hv-sample velocity` evaluates the parity fixture's inputs, and refuses inputs whose
    /// shapes do not fit the model with an error naming the file and the dataset (they trapped
    /// inside the model before).
    func testVelocityChecksInputShapes() throws {
        let fixture = repoRoot.appendingPathComponent("Tests/HVModelTests/Fixtures/dit_parity_a.h5").path
        let out = scratch.appendingPathComponent("v.h5").path
        var (status, log) = try run("hv-sample", ["velocity", "--weights", fixture, "--inputs", fixture, "--out", out])
        XCTAssertEqual(status, 0, log)
        let written = try H5File(path: out, mode: .readOnly)
        XCTAssertEqual(try written.dataset("v").shape(), [2, 4, 3, 4, 6])
        try written.close()
        let source = try H5File(path: fixture, mode: .readOnly)
        let inputs = try source.group("inputs")
        var good: [String: Tensor] = [:]
        for name in ["x", "t", "text_states", "text_mask", "text_states_2"] { good[name] = try TensorIO.read(inputs, name: name) }
        try source.close()
        let cases: [(String, Tensor, String)] = [
            ("x", Tensor(zeros: [2, 3, 3, 4, 6]), "x has 3 channels"),
            ("x", Tensor(zeros: [2, 4, 3, 4, 5]), "multiples of the patch"),
            ("text_mask", Tensor(zeros: [2, 4]), "text_mask has shape [2, 4]"),
            ("text_states_2", Tensor(zeros: [2, 7]), "text_states_2 has shape [2, 7]"),
        ]
        for (name, value, fragment) in cases {
            let path = scratch.appendingPathComponent("bad-\(name).h5").path
            let f = try H5File(path: path, mode: .create)
            for (n, t) in good { try TensorIO.write(n == name ? value : t, to: f, name: n, checksum: false) }
            try f.close()
            (status, log) = try run("hv-sample", ["velocity", "--weights", fixture, "--inputs", path, "--out", out])
            XCTAssertEqual(status, 1, "\(name): \(log)")
            XCTAssert(log.contains(path) && log.contains(fragment), "\(fragment): \(log)")
        }
    }

    /// Same seed, same video bit for bit; the sharded checkpoint and its consolidated file give
    /// identical videos; another seed gives another video; bad sizes are rejected clearly.
    func testDeterministicAcrossCheckpointFormats() throws {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let runDir = scratch.appendingPathComponent("run").path
        var (status, log) = try run("hv-coord", ["launch", "--nodes", hosts, "--config", "configs/runs/tiny.yaml", "--steps", "10", "--zero", "3",
                                                 "--run-dir", runDir, "--quiet"])
        XCTAssertEqual(status, 0, log)
        let consolidated = scratch.appendingPathComponent("model.h5").path
        (status, log) = try run("hv-ckpt", ["consolidate", runDir, "--out", consolidated])
        XCTAssertEqual(status, 0, log)
        func sample(_ ckpt: String, seed: Int, out: String) throws -> Data {
            let p = scratch.appendingPathComponent(out).path
            let (s, l) = try run("hv-sample", ["--checkpoint", ckpt, "--prompt", "a blue circle moving up", "--seed", "\(seed)", "--steps", "8",
                                               "--guidance", "2", "--negative-prompt", "static", "--out", p])
            XCTAssertEqual(s, 0, l)
            XCTAssert(FileManager.default.fileExists(atPath: (p as NSString).deletingPathExtension + ".png"), "contact sheet")
            return try Data(contentsOf: URL(fileURLWithPath: p))
        }
        let a = try sample(consolidated, seed: 3, out: "a.mp4"), b = try sample(consolidated, seed: 3, out: "b.mp4")
        let c = try sample(runDir, seed: 3, out: "c.mp4"), d = try sample(consolidated, seed: 4, out: "d.mp4")
        XCTAssertEqual(a, b, "same seed, same bytes")
        XCTAssertEqual(a, c, "sharded checkpoint and consolidated file give the same video")
        XCTAssertNotEqual(a, d)
        let (bad, msg) = try run("hv-sample", ["--checkpoint", consolidated, "--prompt", "x", "--frames", "8", "--out",
                                               scratch.appendingPathComponent("bad.mp4").path])
        XCTAssertNotEqual(bad, 0)
        XCTAssert(msg.contains("1 + 4k"), msg)
    }

    /// `hv-coord launch --sample`: the same sampling spread over 2 and 3 workers (each rank the
    /// velocity of its share of the video tokens, attention as ring attention over ZeroMQ) gives
    /// the latents of one process up to float rounding; rank 0 alone writes the files; training
    /// flags and bad hv-sample arguments are refused with a clear message.
    func testContextParallelSamplingMatchesOneProcess() throws {
        let hosts1 = scratch.appendingPathComponent("hosts1").path
        try "localhost slots=1\n".write(toFile: hosts1, atomically: true, encoding: .utf8)
        let runDir = scratch.appendingPathComponent("run").path
        var (status, log) = try run("hv-coord", ["launch", "--nodes", hosts1, "--config", "configs/runs/tiny.yaml", "--steps", "30",
                                                 "--run-dir", runDir, "--quiet"])
        XCTAssertEqual(status, 0, log)
        let common = ["--checkpoint", runDir, "--prompt", "a green blob moving down", "--seed", "5", "--steps", "6", "--guidance", "3"]
        func latents(_ name: String) throws -> Tensor {
            let f = try H5File(path: scratch.appendingPathComponent(name + ".h5").path, mode: .readOnly)
            defer { try? f.close() }
            return try TensorIO.read(f, name: "z")
        }
        (status, log) = try run("hv-sample", common + ["--out", scratch.appendingPathComponent("one.mp4").path,
                                                       "--latents", scratch.appendingPathComponent("one.h5").path])
        XCTAssertEqual(status, 0, log)
        let one = try latents("one")
        for workers in [2, 3] {
            let hosts = scratch.appendingPathComponent("hosts\(workers)").path
            try "localhost slots=\(workers)\n".write(toFile: hosts, atomically: true, encoding: .utf8)
            let name = "cp\(workers)"
            (status, log) = try run("hv-coord", ["launch", "--nodes", hosts, "--run-dir", scratch.appendingPathComponent(name + "-logs").path,
                                                 "--sample", "--"] + common + ["--out", scratch.appendingPathComponent(name + ".mp4").path,
                                                                                "--latents", scratch.appendingPathComponent(name + ".h5").path])
            XCTAssertEqual(status, 0, log)
            XCTAssert(log.contains("sampling context parallel over \(workers) rank(s)"), log)
            XCTAssert(FileManager.default.fileExists(atPath: scratch.appendingPathComponent(name + ".png").path), "contact sheet")
            let z = try latents(name)
            XCTAssertEqual(z.shape, one.shape)
            let scale = one.scalars.map(abs).max()!
            let diff = zip(z.scalars, one.scalars).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(diff, 1e-4 * max(scale, 1), "cp \(workers) vs one process: max |dz| \(diff)")
            XCTAssertGreaterThan(scale, 0.1, "the sample is not all zeros")
        }
        (status, log) = try run("hv-coord", ["launch", "--nodes", hosts1, "--config", "configs/runs/tiny.yaml", "--sample", "--"] + common
                                + ["--out", scratch.appendingPathComponent("x.mp4").path])
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("--config, --steps"), log)
        (status, log) = try run("hv-coord", ["launch", "--nodes", hosts1, "--sample", "--", "--checkpoint", runDir, "--out", "x.mp4", "--bogus"])
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("hv-sample arguments") && log.contains("bogus"), log)
    }

    /// The judge itself: clean training latents matching each prompt, rendered, written as mp4
    /// and read back, score 100% — so a model's score measures the model, not the checker.
    func testReferenceLatentsScoreFullMarks() throws {
        let run = try RunConfig.load(path: repoRoot.appendingPathComponent("configs/runs/quickstart.yaml").path)
        let d = run.data
        let data = SyntheticLatents(count: d.count, channels: run.model.in_channels, frames: d.frames, height: d.height, width: d.width,
                                    seed: d.seed, objectSize: d.object_size, randomStart: d.random_start, speed: d.speed)
        XCTAssertGreaterThanOrEqual(PromptFollowing.prompts.count, 20)
        let report = try PromptFollowing.evaluate(outDir: scratch.appendingPathComponent("reference").path, channels: run.model.in_channels) { p, _ in
            PromptFollowing.referenceLatent(for: p, data: data)
        }
        XCTAssertEqual(report.colorHits, report.outcomes.count, report.summary)
        XCTAssertEqual(report.directionHits, report.outcomes.count, report.summary)
    }

    /// Issue 7's acceptance test: the quick-start run (configs/runs/quickstart.yaml, 2 workers, its full
    /// step budget) gives a model whose sampled mp4s, read back, show the prompted colour and
    /// move in the prompted direction; the same model untrained is at chance on both.
    func testQuickStartModelFollowsPrompts() throws {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let runDir = scratch.appendingPathComponent("run").path
        var (status, log) = try run("hv-coord", ["launch", "--nodes", hosts, "--config", "configs/runs/quickstart.yaml", "--zero", "2",
                                                 "--run-dir", runDir, "--quiet"], timeout: 600)
        XCTAssertEqual(status, 0, log)
        let evalDir = scratch.appendingPathComponent("eval").path
        (status, log) = try run("hv-sample", ["eval", "--checkpoint", runDir, "--out-dir", evalDir, "--json"], timeout: 300)
        XCTAssertEqual(status, 0, log)
        let line = log.split(separator: "\n").first { $0.hasPrefix("{") } ?? ""
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], log)
        let colour = try XCTUnwrap(obj["color_accuracy"] as? Double), direction = try XCTUnwrap(obj["direction_accuracy"] as? Double)
        XCTAssertEqual(obj["prompts"] as? Int, PromptFollowing.prompts.count)
        XCTAssertGreaterThanOrEqual(colour, Self.quickStartThreshold, log)
        XCTAssertGreaterThanOrEqual(direction, Self.quickStartThreshold, log)
        XCTAssert(FileManager.default.fileExists(atPath: evalDir + "/001.mp4"))

        // The untrained model (zero-initialised output layer: the sampler returns its noise).
        let cfg = try RunConfig.load(path: repoRoot.appendingPathComponent("configs/runs/quickstart.yaml").path)
        let untrained = TextToVideo(dit: HunyuanDiT(config: cfg.model, seed: 0),
                                    textEncoder: HashTextEncoder(vocabularySize: cfg.text_encoder.vocab_size, maxTokens: cfg.text_encoder.max_tokens,
                                                                 stateDim: cfg.model.text_states_dim, pooledDim: cfg.model.text_states_dim_2, seed: 0),
                                    run: cfg)
        let base = cfg.samplingDefaults
        let report = try PromptFollowing.evaluate(outDir: scratch.appendingPathComponent("untrained").path, channels: cfg.model.in_channels) { p, i in
            var o = base
            o.seed = UInt64(i)
            return try untrained.sampleLatents(prompt: p.text, options: o)
        }
        XCTAssertLessThan(report.colorAccuracy, Self.quickStartThreshold, report.summary)
        XCTAssertLessThan(report.directionAccuracy, Self.quickStartThreshold, report.summary)
    }

    /// Colour and direction accuracy (20 of the 24 prompts) the quick-start model reliably
    /// passes and an untrained one fails (measured: 24/24 and 24/24 with the run's sampler
    /// defaults, sampling seeds 0-23 and 100-123; training is bit-deterministic, the margin is for other machines' rounding;
    /// untrained is near 1/6 and 1/4). BENCHMARKS.md has the figures.
    static let quickStartThreshold = 20.0 / 24
}
