import Foundation
import HVTensor
import HVTrain
import XCTest

/// Progressive training stages (configs/runs/tiny-stages.yaml: 4 image steps at 4x4 latents,
/// batch 8, then 4 video steps at 3x8x8, batch 4).
final class StagesTests: XCTestCase {
    let path = repoRoot.appendingPathComponent("configs/runs/tiny-stages.yaml").path

    func testStagesConfig() throws {
        let cfg = try RunConfig.load(path: path)
        XCTAssertEqual(cfg.train.steps, 8)
        XCTAssertEqual(cfg.stageRanges, [0..<4, 4..<8])
        XCTAssertEqual(cfg.stages[0].data.count, 64)  // the run's data fields, overridden by the stage's
        XCTAssertEqual(cfg.stages[0].data.frames, 1)
        XCTAssertEqual(cfg.stageData(1).batchSize, 4)
        XCTAssertEqual(cfg.stageData(0).batchSize, 8)
        let text = try String(contentsOfFile: path, encoding: .utf8)
            .replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: " + repoRoot.appendingPathComponent("configs/models/tiny.yaml").path)
        let dir = NSTemporaryDirectory() + "hv-stages-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (edit, field) in [("  batch_size: 8\n", "train.steps"), ("    data: {frames: 1,", "stages.0.dat"), ("    steps: 4\n    batch_size: 4", "stages.1.batch_size")] {
            let bad: String
            switch field {
            case "train.steps": bad = text.replacingOccurrences(of: edit, with: edit + "  steps: 5\n")
            case "stages.0.dat": bad = text.replacingOccurrences(of: edit, with: "    dat: {frames: 1,")
            default: bad = text.replacingOccurrences(of: edit, with: "    steps: 4\n    batch_size: 0")
            }
            let p = dir + "/bad.yaml"
            try bad.write(toFile: p, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try RunConfig.load(path: p)) { e in XCTAssert("\(e)".contains(field), "\(field): \(e)") }
        }
    }

    /// The trainer moves through the stages (shapes and batch sizes change at step 4), and a
    /// resume from a checkpoint at the boundary or inside a stage continues bit for bit.
    func testStagesTrainAndResume() throws {
        let cfg = try RunConfig.load(path: path)
        let a = try Trainer(config: cfg)
        var losses: [Float] = []
        for s in 0..<8 {
            let st = try a.trainStep()
            losses.append(st.loss)
            XCTAssertEqual(st.samples, s < 4 ? 8 : 4)
            XCTAssertEqual(st.videoTokens / st.samples, s < 4 ? 1 * 2 * 2 : 3 * 4 * 4, "step \(s)")
            XCTAssertEqual(a.endsStage(a.step), a.step == 4)
        }
        XCTAssertEqual(a.stage, 1)
        XCTAssert(losses.allSatisfy { $0.isFinite })
        for at in [4, 2, 6] {
            let dir = NSTemporaryDirectory() + "hv-stages-run-\(getpid())-\(at)"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let b = try Trainer(config: cfg)
            for _ in 0..<at { _ = try b.trainStep() }
            let ckpt = try Checkpointing.save(b, runDir: dir, keep: 2)
            let c = try Trainer(config: cfg)
            try Checkpointing.load(c, from: ckpt)
            XCTAssertEqual(c.step, at)
            XCTAssertEqual(c.stage, cfg.stageIndex(forStep: at))
            let rest = try (at..<8).map { _ in try c.trainStep().loss }
            XCTAssertEqual(rest, Array(losses[at...]), "resumed at step \(at)")
        }
    }
}
