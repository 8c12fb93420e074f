import Foundation
import HVModel
import HVScaling
import HVTrain
import XCTest

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The FLOPs model and the family files.
final class CostTests: XCTestCase {
    /// HYVideo-T/2 at 720p x 129 frames (latent 33x90x160 -> 118,800 video tokens, + 256 text tokens): the
    /// attention term 12·L·S²·H is ~3.4x the 6·N·S term (REFERENCE.md), and the FLOPs model counts it.
    func testThirteenBAttentionTermAt720p() throws {
        let m = try loadModelConfig(path: repoRoot.appendingPathComponent("configs/models/hyvideo-t2-13b.yaml").path)
        let video = m.videoTokens(latentT: 33, latentH: 90, latentW: 160)
        XCTAssertEqual(video, 118_800)
        let S = Double(video + 256)
        let six = 6 * Double(m.parameterCount) * S
        let attention = SampleCost.attentionFLOPs(m, videoTokens: video, textTokens: 256)
        XCTAssertEqual(attention / six, 3.4, accuracy: 0.15)
        let total = m.trainingFLOPs(videoTokens: video, textTokens: 256)
        // Linear layers: each token passes through its own stream's weights in the dual-stream blocks,
        // so they cost less than 6N per token; attention comes on top.
        let linear = total - attention
        XCTAssertGreaterThan(linear / six, 0.5)
        XCTAssertLessThan(linear / six, 1.0)
        XCTAssertEqual(total / six, 3.4 + linear / six, accuracy: 0.2)
        // At a 256 px image (256 tokens) attention is a small part.
        let img = m.trainingFLOPs(videoTokens: 256, textTokens: 256)
        XCTAssertLessThan(SampleCost.attentionFLOPs(m, videoTokens: 256, textTokens: 256) / img, 0.1)
    }

    /// Each family file loads, its members grow in size, and the parameter counts in its comments are
    /// DiTConfig.parameterCount's (so the comments cannot go stale).
    func testFamilyFilesMatchTheirComments() throws {
        for name in ["local-family", "image-family", "video-family"] {
            let path = repoRoot.appendingPathComponent("configs/scaling/\(name).yaml").path
            let f = try ScalingFamily.load(path: path)
            let text = try String(contentsOfFile: path, encoding: .utf8)
            XCTAssertEqual(f.members.map(\.params), f.bySize.map(\.params), "\(name): members should be listed smallest first")
            for m in f.members {
                let line = try XCTUnwrap(text.split(separator: "\n").first { $0.contains("name: \(m.name) ") }, "\(name): \(m.name)")
                let digits = line.split(separator: "#").last!.filter { $0.isNumber }
                XCTAssertEqual(Int(digits), m.params, "\(name): \(m.name)'s comment")
            }
            if name != "local-family" {
                XCTAssertEqual(f.members.count, 7)
                XCTAssertEqual(Double(f.members.first!.params), 92e6, accuracy: 0.15 * 92e6)
                XCTAssertEqual(Double(f.members.last!.params), 6.6e9, accuracy: 0.05 * 6.6e9)
                XCTAssertEqual(f.target?.model.parameterCount, 12_821_012_544)
                for m in f.members {
                    XCTAssertEqual(m.run.model.headDim, 128)
                    XCTAssertEqual(m.run.model.mm_single_blocks_depth, 2 * m.run.model.mm_double_blocks_depth)
                }
            } else {
                XCTAssertLessThan(f.members.first!.params, 60_000)
                XCTAssertGreaterThan(f.members.last!.params, 1_500_000)
            }
        }
    }

    /// The IsoFLOP grid spends each budget to within one step, and names runs by member and budget.
    func testPlanSpendsTheBudget() throws {
        let f = try ScalingFamily.load(path: repoRoot.appendingPathComponent("configs/scaling/local-family.yaml").path)
        let plan = try IsoFLOPPlanner.plan(family: f, budgets: [3e10, 1e10])
        XCTAssertEqual(plan.budgets, [1e10, 3e10])
        XCTAssertEqual(plan.runs.count, 2 * f.members.count)
        for r in plan.runs {
            XCTAssertLessThanOrEqual(abs(r.flops - r.budget), 0.5 * Double(r.batch) * r.cost.flops + 1)
            XCTAssertEqual(r.run.train.steps, r.steps)
            XCTAssertEqual(r.tokens, Double(r.samples) * 56)   // 3x8x8 latents -> 48 video tokens, + 8 text
        }
        XCTAssertEqual(plan.runs.first?.name, "L0-C1e10")
        // The K sizes nearest a prior optimum; members below --min-steps are skipped with a reason.
        let k = try IsoFLOPPlanner.plan(family: f, budgets: [1e10], sizesPerBudget: 3, tokensPerParam: 1)
        XCTAssertEqual(k.runs.count, 3)
        let m = try IsoFLOPPlanner.plan(family: f, budgets: [1e10], minSteps: 20)
        XCTAssert(m.skipped.contains { $0.member == "L4" && $0.reason.contains("steps") })
        XCTAssertThrowsError(try parseBudgets("1e10,abc"))
    }

    func testFamilyErrorsNameTheField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hv-fam-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = repoRoot.appendingPathComponent("configs/scaling/base-local.yaml").path
        let p = dir.appendingPathComponent("bad.yaml").path
        try "base: \(base)\nmembers:\n  - name: a\n    model: {hidden_size: 32, heads_nums: 2}\n".write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ScalingFamily.load(path: p)) { XCTAssert("\($0)".contains("members.0.model.heads_nums"), "\($0)") }
        try "base: \(base)\nmembers:\n  - name: a\n    model: {hidden_size: 30}\n".write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ScalingFamily.load(path: p)) { XCTAssert("\($0)".contains("members.0") && "\($0)".contains("head dim"), "\($0)") }
    }
}
