import Foundation
import HVCheckpoint
import HVTrain
import XCTest
import _HVTestSupport

/// Sharded HDF5 checkpoints through real multi-process runs.
final class CheckpointTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-ckpt-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func hosts(_ n: Int) throws -> String {
        let p = scratch.appendingPathComponent("hosts-\(n)").path
        try "localhost slots=\(n)\n".write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// The tiny run config with extra YAML sections appended (model path made absolute).
    func config(_ extra: String = "", model: String = "configs/models/tiny.yaml") throws -> String {
        var text = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path, encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.appendingPathComponent(model).path)")
        let p = scratch.appendingPathComponent("run-\(UUID().uuidString.prefix(6)).yaml").path
        try (text + "\n" + extra).write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    @discardableResult
    func launch(_ workers: Int, zero: Int, steps: Int, runDir: String, config cfg: String? = nil, resume: String? = nil,
                expectSuccess: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> (Int32, String) {
        var args = ["launch", "--nodes", try hosts(workers), "--config", try cfg ?? config(), "--steps", "\(steps)", "--zero", "\(zero)",
                    "--run-dir", runDir, "--quiet"]
        if let resume { args += ["--resume", resume] }
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), args, timeout: 180, cwd: repoRoot.path)
        if expectSuccess { XCTAssertEqual(status, 0, "launch failed: \((out + err).suffix(3000))", file: file, line: line) }
        return (status, out + err)
    }

    func losses(_ runDir: String) throws -> [Int: Double] {
        let text = try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8)
        var out: [Int: Double] = [:]
        for l in text.split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as! [String: Any]
            out[o["step"] as! Int] = (o["loss"] as! Double)
        }
        return out
    }

    func weights(_ ckpt: String) throws -> [String: [Float]] {
        let m = try Checkpointing.verify(ckpt)
        return try Checkpointing.readUnits(ckpt, m).mapValues { $0.weights + $0.expAvg + $0.expAvgSq }
    }

    func dir(_ run: String, _ step: Int) -> String { run + "/checkpoints/" + Checkpointing.directoryName(step: step) }

    /// Progressive stages through the launcher (configs/runs/tiny-stages.yaml: 4 image steps, then
    /// 4 video steps at another batch size; 2 workers, ZeRO 2): a checkpoint at the stage
    /// boundary, the switch logged, and a run resumed from the boundary checkpoint continues in
    /// the video stage with the same losses and final state, bit for bit.
    func testStagesCheckpointAtBoundaryAndResume() throws {
        var text = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/runs/tiny-stages.yaml").path, encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.appendingPathComponent("configs/models/tiny.yaml").path)")
        let cfg = scratch.appendingPathComponent("stages.yaml").path
        try text.write(toFile: cfg, atomically: true, encoding: .utf8)
        let straight = scratch.appendingPathComponent("stages-straight").path, resumed = scratch.appendingPathComponent("stages-resumed").path
        try launch(2, zero: 2, steps: 8, runDir: straight, config: cfg)
        XCTAssert(FileManager.default.fileExists(atPath: dir(straight, 4) + "/manifest.json"), "no checkpoint at the stage boundary")
        let log = try String(contentsOfFile: straight + "/logs/rank-0.log", encoding: .utf8)
        XCTAssert(log.contains("stage 0 (image-low-res) done at step 4; next: stage 1 (video)"), log)
        try launch(2, zero: 2, steps: 8, runDir: resumed, config: cfg, resume: dir(straight, 4))
        let a = try losses(straight), b = try losses(resumed)
        XCTAssertEqual(a.count, 8)
        for s in 5...8 { XCTAssertEqual(a[s], b[s], "step \(s) loss") }
        XCTAssertEqual(try weights(dir(straight, 8)), try weights(dir(resumed, 8)), "parameters and Adam state")
    }

    /// 10 steps + save + stop + resume + 10 steps == 20 straight steps, bit for bit (ZeRO 0 and 3, 2 workers).
    func testExactResume() throws {
        for stage in [0, 3] {
            let straight = scratch.appendingPathComponent("straight-\(stage)").path
            let split = scratch.appendingPathComponent("split-\(stage)").path
            try launch(2, zero: stage, steps: 20, runDir: straight)
            try launch(2, zero: stage, steps: 10, runDir: split)
            try launch(2, zero: stage, steps: 20, runDir: split, resume: "auto")
            let a = try losses(straight), b = try losses(split)
            for s in 1...20 { XCTAssertEqual(a[s], b[s], "stage \(stage) step \(s) loss") }
            XCTAssertEqual(try weights(dir(straight, 20)), try weights(dir(split, 20)), "stage \(stage): parameters and Adam state")
        }
    }

    /// Saved on 4 workers with ZeRO 3, resumed on 2 with ZeRO 1, then on 1 with ZeRO 0: the state is
    /// unchanged by resharding and the next step matches the un-resharded run.
    func testReshardedResume() throws {
        let a = scratch.appendingPathComponent("a").path, b = scratch.appendingPathComponent("b").path
        let c = scratch.appendingPathComponent("c").path, ref = scratch.appendingPathComponent("ref").path
        try launch(4, zero: 3, steps: 10, runDir: a)
        try launch(2, zero: 1, steps: 10, runDir: b, resume: dir(a, 10))   // no steps: loads and re-saves on 2 workers
        XCTAssertEqual(try weights(dir(a, 10)), try weights(dir(b, 10)), "4 -> 2 workers keeps every value")
        try launch(1, zero: 0, steps: 11, runDir: c, resume: dir(b, 10))
        try launch(4, zero: 3, steps: 11, runDir: ref, resume: dir(a, 10))
        let lc = try losses(c)[11]!, lr = try losses(ref)[11]!
        XCTAssertEqual(lc, lr, accuracy: 1e-5 * abs(lr))
        let m = try CheckpointManifest.read(directory: dir(c, 11))
        XCTAssertEqual(m.world_size, 1)
        XCTAssertEqual(m.step, 11)
    }

    /// SIGKILL everything at random moments while checkpoints are being written every step:
    /// `latest` always names a complete, readable checkpoint.
    func testKilledSavesNeverBreakLatest() throws {
        let cfg = try config("checkpoint:\n  every: 1\n  keep: 2\n")
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<3 {
            let run = scratch.appendingPathComponent("kill-\(trial)").path
            let p = Process()
            p.executableURL = try locateExecutable("hv-coord")
            p.arguments = ["launch", "--nodes", try hosts(2), "--config", cfg, "--steps", "400", "--run-dir", run, "--quiet"]
            p.currentDirectoryURL = repoRoot
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(UInt32.random(in: 1_200_000...2_500_000, using: &rng))
            kill(p.processIdentifier, SIGKILL)
            _ = try runProcess(URL(fileURLWithPath: "/usr/bin/pkill"), ["-9", "-f", run], timeout: 10)
            p.waitUntilExit()
            let root = run + "/checkpoints"
            guard let latest = try? String(contentsOfFile: root + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) else {
                continue  // killed before the first save completed: nothing to point to, which is fine
            }
            XCTAssertNoThrow(try Checkpointing.verify(root + "/" + latest), "trial \(trial): latest -> \(latest)")
        }
    }

    /// A corrupted newest checkpoint is reported with its file and skipped by --resume auto.
    func testCorruptCheckpointIsDetectedAndSkipped() throws {
        let run = scratch.appendingPathComponent("corrupt").path
        try launch(2, zero: 2, steps: 10, runDir: run, config: try config("checkpoint:\n  every: 5\n"))
        let victim = dir(run, 10) + "/rank-00001.h5"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        for i in stride(from: bytes.count / 2, to: bytes.count - 64, by: 97) { bytes[i] ^= 0x5A }
        try bytes.write(to: URL(fileURLWithPath: victim))
        XCTAssertThrowsError(try Checkpointing.verify(dir(run, 10))) { e in XCTAssert("\(e)".contains("rank-00001.h5"), "\(e)") }
        let (_, log) = try launch(2, zero: 2, steps: 12, runDir: run, resume: "auto")
        XCTAssert(log.contains("skipping checkpoint") && log.contains("step-0000010"), log)
        XCTAssert(log.contains("resuming from \(dir(run, 5))"), log)
    }

    func testConfigMismatchNamesFields() throws {
        let run = scratch.appendingPathComponent("mismatch").path
        try launch(1, zero: 0, steps: 2, runDir: run)
        let other = try config().replacingOccurrences(of: ".yaml", with: "-wide.yaml")
        var text = try String(contentsOfFile: try config(), encoding: .utf8)
        text += "\n"
        // Same run, a different model: 3 single-stream blocks instead of 2.
        let modelPath = scratch.appendingPathComponent("wide.yaml").path
        let model = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/models/tiny.yaml").path, encoding: .utf8)
            .replacingOccurrences(of: "mm_single_blocks_depth: 2", with: "mm_single_blocks_depth: 3")
        try model.write(toFile: modelPath, atomically: true, encoding: .utf8)
        text = text.replacingOccurrences(of: repoRoot.appendingPathComponent("configs/models/tiny.yaml").path, with: modelPath)
        try text.write(toFile: other, atomically: true, encoding: .utf8)
        let (status, log) = try launch(1, zero: 0, steps: 4, runDir: run, config: other, resume: "auto", expectSuccess: false)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("different model config") && log.contains("mm_single_blocks_depth"), log)
    }

    /// The consolidated file is plain HDF5: hdf5-tools' h5ls lists the official names.
    func testConsolidatedFileReadsWithH5ls() throws {
        let run = scratch.appendingPathComponent("consolidate").path
        try launch(2, zero: 3, steps: 3, runDir: run)
        let out = scratch.appendingPathComponent("model.h5").path
        let (status, _, err) = try runProcess(try locateExecutable("hv-ckpt"), ["consolidate", run, "--out", out], timeout: 60)
        XCTAssertEqual(status, 0, err)
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/h5ls") else {
            throw XCTSkip("h5ls (Debian hdf5-tools) is not installed; `make deps` installs it")
        }
        let (s2, listing, _) = try runProcess(URL(fileURLWithPath: "/usr/bin/h5ls"), [out], timeout: 30)
        XCTAssertEqual(s2, 0)
        for name in ["double_blocks.0.img_attn_qkv.weight", "single_blocks.1.linear1.weight", "final_layer.linear.weight", "txt_in.input_embedder.weight"] {
            XCTAssert(listing.contains(name), "h5ls does not list \(name)")
        }
    }
}
