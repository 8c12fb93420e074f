import Foundation
import HVCheckpoint
import HVTrain
import XCTest
import _HVTestSupport

/// The causal VAE trained through `hv-coord launch` (real worker processes, real ZeroMQ on
/// loopback, sharded HDF5 checkpoints): data parallel equals one worker, resume is exact, and the
/// run's weights come out as the file `hv-sample --vae` reads.
final class VAELaunchTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-vae-launch-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func hosts(_ n: Int) throws -> String {
        let p = scratch.appendingPathComponent("hosts-\(n)").path
        try "localhost slots=\(n)\n".write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// configs/runs/vae-tiny.yaml with global batch 4 and 2 held-out clips (a short final eval).
    func config() throws -> String {
        var text = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/runs/vae-tiny.yaml").path, encoding: .utf8)
        text = text.replacingOccurrences(of: "vae: ../vae/tiny.yaml", with: "vae: \(repoRoot.appendingPathComponent("configs/vae/tiny.yaml").path)")
        text = text.replacingOccurrences(of: "batch_size: 2", with: "batch_size: 4").replacingOccurrences(of: "held_out: 16", with: "held_out: 2")
        let p = scratch.appendingPathComponent("vae-run.yaml").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    @discardableResult
    func launch(_ workers: Int, steps: Int, runDir: String, zero: Int = 0, extra: [String] = [], expectSuccess: Bool = true,
                file: StaticString = #filePath, line: UInt = #line) throws -> (Int32, String) {
        let args = ["launch", "--nodes", try hosts(workers), "--config", try config(), "--steps", "\(steps)", "--zero", "\(zero)",
                    "--run-dir", runDir, "--quiet"] + extra
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), args, timeout: 300, cwd: repoRoot.path)
        if expectSuccess { XCTAssertEqual(status, 0, "launch failed: \((out + err).suffix(3000))", file: file, line: line) }
        return (status, out + err)
    }

    func losses(_ runDir: String, key: String = "loss") throws -> [Int: Double] {
        let text = try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8)
        var out: [Int: Double] = [:]
        for l in text.split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as! [String: Any]
            out[o["step"] as! Int] = (o[key] as! Double)
        }
        return out
    }

    func state(_ ckpt: String) throws -> [String: [Float]] {
        let m = try Checkpointing.verify(ckpt)
        return try Checkpointing.readUnits(ckpt, m).mapValues { $0.weights + $0.expAvg + $0.expAvgSq }
    }

    func dir(_ run: String, _ step: Int) -> String { run + "/checkpoints/" + Checkpointing.directoryName(step: step) }

    func vaeWeights(_ path: String) throws -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: try VAEWeights.load(path: path).namedParameters().map { ($0.0, $0.1.scalars) })
    }

    /// 1 worker (batch 4) and 2 workers (2 + 2, ZeRO 0 and 2) give the same loss curve (within
    /// 1e-5 relative for 2 steps, 1e-4 after); the 2-worker run writes a `kind: vae` checkpoint and RUN_DIR/vae.h5, and
    /// `hv-coord export-vae` of its last checkpoint writes the same weights.
    func testDataParallelMatchesOneWorker() throws {
        let one = scratch.appendingPathComponent("one").path
        try launch(1, steps: 4, runDir: one)
        let a = try losses(one)
        XCTAssertEqual(a.keys.sorted(), [1, 2, 3, 4])
        XCTAssertNotEqual(a[1], a[4], "the loss should move over 4 steps")
        for zero in [0, 2] {
            let two = scratch.appendingPathComponent("two-\(zero)").path
            let (_, log) = try launch(2, steps: 4, runDir: two, zero: zero)
            let b = try losses(two)
            XCTAssertEqual(b.keys.sorted(), [1, 2, 3, 4], String(log.suffix(2000)))
            // Adam's update barely depends on the gradient's scale, so the losses alone would
            // not notice gradients summed instead of averaged over the workers; the global
            // gradient norm of the first step (same weights, same batch) does.
            let g1 = try XCTUnwrap(try losses(one, key: "grad_norm")[1]), g2 = try XCTUnwrap(try losses(two, key: "grad_norm")[1])
            XCTAssertGreaterThan(g1, 0)
            XCTAssertEqual(g1, g2, accuracy: 1e-5 * g1, "ZeRO \(zero): step-1 gradient norm, 1 worker \(g1), 2 workers \(g2)")
            for s in 1...4 {
                // Steps 1-2 within 1e-5; later steps within 1e-4: the runs differ only in float
                // summation order (batch 4 in one process vs 2 + 2 and an all-reduce), and Adam's
                // g / sqrt(v) turns ~1e-7 gradient differences of near-zero gradients into whole
                // updates, so the gap grows step by step (measured 2.3e-5 at step 3 after the
                // decoder's convolutions changed their summation order).
                let x = try XCTUnwrap(a[s]), y = try XCTUnwrap(b[s])
                XCTAssertEqual(x, y, accuracy: (s <= 2 ? 1e-5 : 1e-4) * abs(x), "ZeRO \(zero) step \(s): 1 worker \(x), 2 workers \(y)")
            }
            let m = try CheckpointManifest.read(directory: dir(two, 4))
            XCTAssertEqual(m.kind, "vae")
            XCTAssertEqual(m.world_size, 2)
            let rank0 = try String(contentsOfFile: two + "/logs/rank-0.log", encoding: .utf8)
            XCTAssert(rank0.contains("held-out PSNR"), rank0)
            let exported = scratch.appendingPathComponent("exported-\(zero).h5").path
            let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), ["export-vae", "--checkpoint", two, "--out", exported],
                                                    timeout: 60, cwd: repoRoot.path)
            XCTAssertEqual(status, 0, out + err)
            XCTAssertEqual(try vaeWeights(exported), try vaeWeights(two + "/vae.h5"), "export of step 4 == the run's vae.h5")
        }
        // The single-worker and data-parallel weights agree closely too (float summation order only).
        let w1 = try vaeWeights(one + "/vae.h5"), w2 = try vaeWeights(scratch.appendingPathComponent("two-0").path + "/vae.h5")
        var worst: Float = 0
        for (k, v) in w1 { for (p, q) in zip(v, w2[k]!) { worst = max(worst, abs(p - q)) } }
        XCTAssertLessThan(worst, 5e-4) // after 4 steps, for the reason above
    }

    /// 2 steps, stop (saving), resume to 4 == 4 straight steps, bit for bit (losses, weights, Adam
    /// state); the step-2 checkpoint resumed on 1 worker gives the same step-3 loss within 1e-5.
    func testExactResume() throws {
        let straight = scratch.appendingPathComponent("straight").path, split = scratch.appendingPathComponent("split").path
        try launch(2, steps: 4, runDir: straight)
        try launch(2, steps: 4, runDir: split, extra: ["--stop-at", "2"])
        XCTAssertEqual(try losses(split).keys.sorted(), [1, 2])
        XCTAssertNotNil(try? Checkpointing.verify(dir(split, 2)))
        try launch(2, steps: 4, runDir: split, extra: ["--resume", "auto"])
        let a = try losses(straight), b = try losses(split)
        for s in 1...4 { XCTAssertEqual(a[s], b[s], "step \(s) loss") }
        XCTAssertEqual(try state(dir(straight, 4)), try state(dir(split, 4)), "parameters and Adam state")
        let single = scratch.appendingPathComponent("single").path
        try launch(1, steps: 4, runDir: single, extra: ["--resume", dir(split, 2), "--stop-at", "3"])
        let x = try XCTUnwrap(a[3]), y = try XCTUnwrap(try losses(single)[3])
        XCTAssertEqual(x, y, accuracy: 1e-5 * abs(x))
    }

    /// Refused before any worker starts: ZeRO 3, a batch the workers do not divide, a DiT
    /// checkpoint given to a VAE export.
    func testRefusals() throws {
        let run = scratch.appendingPathComponent("refused").path
        var (status, log) = try launch(2, steps: 2, runDir: run, zero: 3, expectSuccess: false)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("--zero 0, 1 or 2"), log)
        (status, log) = try launch(3, steps: 2, runDir: run, expectSuccess: false)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("not divisible by the 3 workers"), log)
    }

    /// In-process `train-vae`: with --psnr-every and --out, the weights are also written at every
    /// PSNR report (so a long run stopped early keeps them), atomically (no temporary file left),
    /// and the file reads back with the run's VAE config; a later --init from it starts from them.
    func testTrainVAEWritesWeightsAtEveryPSNRReport() throws {
        let out = scratch.appendingPathComponent("w.h5").path
        let hvCoord = try locateExecutable("hv-coord")
        var (status, stdout, stderr) = try runProcess(hvCoord, ["train-vae", "--config", try config(), "--steps", "3", "--psnr-every", "2",
                                                                  "--out", out, "--threads", "1"], timeout: 300, cwd: repoRoot.path)
        XCTAssertEqual(status, 0, (stdout + stderr).suffix(3000).description)
        XCTAssert(stdout.contains("step     2  held-out PSNR"), stdout)
        XCTAssert(stderr.contains("wrote the step-2 VAE weights to \(out)"), stderr)
        XCTAssert(stderr.contains("wrote VAE weights to \(out)"), stderr)
        let left = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.contains(".tmp") }
        XCTAssertEqual(left, [], "temporary files left beside the weights")
        let vae = try VAEWeights.load(path: out)
        XCTAssertEqual(vae.config, try VAERunConfig.load(path: try config()).vae)
        (status, stdout, stderr) = try runProcess(hvCoord, ["train-vae", "--config", try config(), "--steps", "1", "--init", out, "--threads", "1"],
                                                  timeout: 300, cwd: repoRoot.path)
        XCTAssertEqual(status, 0, (stdout + stderr).suffix(3000).description)
        XCTAssert(stderr.contains("starting from the weights in \(out)"), stderr)
    }
}
