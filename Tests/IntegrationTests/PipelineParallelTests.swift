import Foundation
import HVCheckpoint
import HVTrain
import XCTest
import _HVTestSupport

/// Pipeline-parallel training through `hv-coord launch`: the tiny run's blocks cut into pp
/// stages (1F1B over micro-batches, activations and gradients over loopback TCP), alone and
/// with context parallelism within each stage, follows the single-worker loss curve; each stage
/// holds and saves only its own parameters, and checkpoints move between meshes.
final class PipelineParallelTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-pp-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// configs/runs/tiny.yaml with `train.pipeline_parallel: pp`, `train.micro_batches: m` and
    /// `train.context_parallel: cp`.
    func tinyConfig(pp: Int, microBatches m: Int, cp: Int = 1) throws -> String {
        var text = try String(contentsOf: repoRoot.appendingPathComponent("configs/runs/tiny.yaml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.path)/configs/models/tiny.yaml")
        text = text.replacingOccurrences(of: "\ntrain:\n", with: "\ntrain:\n  pipeline_parallel: \(pp)\n  micro_batches: \(m)\n  context_parallel: \(cp)\n")
        let p = scratch.appendingPathComponent("tiny-pp\(pp)-m\(m)-cp\(cp).yaml").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// Losses by step of one launch (run directory `name`) and rank 0's log.
    @discardableResult
    func run(workers: Int, pp: Int, microBatches m: Int, cp: Int = 1, zero: Int, steps: Int, name: String? = nil,
             resume: String? = nil) throws -> (losses: [Int: Double], log: String) {
        let hosts = scratch.appendingPathComponent("hosts-\(workers).txt").path
        try "localhost slots=\(workers)\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let dir = scratch.appendingPathComponent(name ?? "w\(workers)-pp\(pp)-m\(m)-cp\(cp)-z\(zero)").path
        var args = ["launch", "--nodes", hosts, "--config", try tinyConfig(pp: pp, microBatches: m, cp: cp), "--steps", "\(steps)",
                    "--zero", "\(zero)", "--run-dir", dir, "--quiet"]
        if let resume { args += ["--resume", scratch.appendingPathComponent(resume).path] }
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), args, timeout: 240, cwd: repoRoot.path)
        XCTAssertEqual(status, 0, "\(workers) workers, pp \(pp), m \(m), cp \(cp), ZeRO \(zero): \((out + err).suffix(2000))")
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        var losses: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            losses[obj["step"] as! Int] = (obj["loss"] as! Double)
        }
        return (losses, (try? String(contentsOfFile: dir + "/logs/rank-0.log", encoding: .utf8)) ?? "")
    }

    /// 10 steps: 1 worker; pp 2 over 4 micro-batches; pp 3 over 2 with ZeRO-1; dp 2 x pp 2 over
    /// 2 with ZeRO-2 and with ZeRO-3; and 5 steps at pp 2 resumed for 5 on one worker.
    func testPipelineParallelFollowsTheSingleWorkerLossCurve() throws {
        let steps = 10
        let reference = try run(workers: 1, pp: 1, microBatches: 1, zero: 0, steps: steps).losses
        XCTAssertEqual(reference.count, steps)
        for (workers, pp, m, zero) in [(2, 2, 4, 0), (3, 3, 2, 1), (4, 2, 2, 2), (4, 2, 2, 3)] {
            let (l, log) = try run(workers: workers, pp: pp, microBatches: m, zero: zero, steps: steps)
            XCTAssertEqual(l.count, steps, "\(workers) workers pp \(pp)")
            for s in 1...steps {
                XCTAssertEqual(l[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!),
                               "\(workers) workers, pp \(pp), m \(m), ZeRO \(zero): step \(s)")
            }
            XCTAssert(log.contains("pipeline partition (balanced by FLOPs): stage 0: stem + "), log)
            XCTAssert(log.contains(String(format: "formula (p-1)/(m+p-1) = %.3f for p %d, m %d", Double(pp - 1) / Double(m + pp - 1), pp, m)), log)
        }
        // A checkpoint of a pp 2 run resumes on one worker and continues the same curve.
        try run(workers: 2, pp: 2, microBatches: 2, zero: 1, steps: 5, name: "pp2-first-half")
        let resumed = try run(workers: 1, pp: 1, microBatches: 1, zero: 0, steps: steps, name: "pp1-second-half",
                              resume: "pp2-first-half/checkpoints/step-0000005").losses
        XCTAssertEqual(Set(resumed.keys), Set(6...steps))
        for s in 6...steps {
            XCTAssertEqual(resumed[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!), "resumed from pp 2 on 1 worker: step \(s)")
        }
    }

    /// Every tensor of a checkpoint by official name: weights, Adam m and v, concatenated.
    func tensors(_ ckpt: String) throws -> [String: [Float]] {
        let m = try Checkpointing.verify(ckpt)
        let units = try Checkpointing.readUnits(ckpt, m)
        var out: [String: [Float]] = [:]
        for u in m.units {
            let (w, a, v) = units[u.name]!
            for t in u.tensors {
                let r = t.offset..<(t.offset + t.shape.reduce(1, *))
                XCTAssertNil(out[t.name], "\(t.name) saved twice in \(ckpt)")
                out[t.name] = Array(w[r] + a[r] + v[r])
            }
        }
        return out
    }

    /// Each pp stage holds only its own parameters and saves them under their official names
    /// (the stem's on stage 0, the final layer on the last); a pp 2 checkpoint holds the same
    /// tensors as a dp 2 one of the same step, resumes on dp 2, and a dp 2 one resumes on pp 2,
    /// both continuing the single-worker curve.
    func testPipelineStagesOwnTheirParametersAndCheckpointsMoveBetweenMeshes() throws {
        let steps = 10
        let reference = try run(workers: 1, pp: 1, microBatches: 1, zero: 0, steps: steps).losses
        try run(workers: 2, pp: 2, microBatches: 2, zero: 1, steps: 5, name: "pp2")
        try run(workers: 2, pp: 1, microBatches: 1, zero: 1, steps: 5, name: "dp2")
        let ppCkpt = scratch.appendingPathComponent("pp2/checkpoints/step-0000005").path
        let dpCkpt = scratch.appendingPathComponent("dp2/checkpoints/step-0000005").path

        // Stage 0 (rank 0) holds the stem, the text encoder and double_blocks; stage 1 (rank 1)
        // the single blocks and the final layer: each unit's shards are in its stage's file only.
        let manifest = try CheckpointManifest.read(directory: ppCkpt)
        let owner = Dictionary(uniqueKeysWithValues: manifest.units.map { ($0.name, Set($0.shards.map(\.rank))) })
        XCTAssertEqual(owner["outer"], [0])
        XCTAssertEqual(owner["txt_in"], [0])
        XCTAssertEqual(owner["double_blocks.0"], [0])
        XCTAssertEqual(owner["single_blocks.1"], [1])
        XCTAssertEqual(owner["final_layer"], [1])
        let outer = manifest.units.first { $0.name == "outer" }!.tensors.map(\.name)
        XCTAssert(outer.contains("img_in.proj.weight") && outer.contains("text_encoder.token_embedding.weight"), "\(outer)")
        XCTAssertFalse(outer.contains { $0.hasPrefix("final_layer.") }, "\(outer)")
        // Each rank logs what it holds: together the two stages hold the model once.
        var held: [Int] = []
        for r in 0..<2 {
            let log = try String(contentsOfFile: scratch.appendingPathComponent("pp2/logs/rank-\(r).log").path, encoding: .utf8)
            let line = log.split(separator: "\n").first { $0.contains("rank \(r) model state: ") }.map(String.init) ?? ""
            XCTAssert(line.contains("(pipeline stage \(r), ZeRO over 1 rank(s))"), line)
            let words = line.components(separatedBy: "model state: ").last!.split(separator: " ")
            held.append(Int(words[0].filter(\.isNumber)) ?? -1)
            XCTAssertEqual(Int(words[2].filter(\.isNumber)), manifest.units.reduce(0) { $0 + $1.count }, line)
        }
        XCTAssertEqual(held.reduce(0, +), manifest.units.reduce(0) { $0 + $1.count })
        XCTAssert(held.allSatisfy { $0 > 0 && $0 < held.reduce(0, +) }, "\(held)")

        // Same tensors (weights and Adam moments), however the mesh held them.
        let a = try tensors(ppCkpt), b = try tensors(dpCkpt)
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (name, x) in a {
            let y = b[name]!
            XCTAssertEqual(x.count, y.count, name)
            let scale = max(y.map(abs).max() ?? 0, 1e-3)
            let diff = zip(x, y).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(diff, 1e-4 * scale, "\(name): pp 2 vs dp 2 after 5 steps")
        }

        let dpResumed = try run(workers: 2, pp: 1, microBatches: 1, zero: 2, steps: steps, name: "pp2-to-dp2",
                                resume: "pp2/checkpoints/step-0000005").losses
        let ppResumed = try run(workers: 2, pp: 2, microBatches: 4, zero: 0, steps: steps, name: "dp2-to-pp2",
                                resume: "dp2/checkpoints/step-0000005").losses
        for (what, l) in [("pp 2 -> dp 2", dpResumed), ("dp 2 -> pp 2", ppResumed)] {
            XCTAssertEqual(Set(l.keys), Set(6...steps), what)
            for s in 6...steps {
                XCTAssertEqual(l[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!), "\(what): step \(s)")
            }
        }
    }

    /// The full dp x cp x pp mesh: cp 2 x pp 2 on 4 workers (ring attention within each stage,
    /// hand-offs between matching cp ranks) follows the single-worker curve, with ZeRO-1 over
    /// each stage's two cp ranks, and its checkpoint resumes on one worker.
    func testContextAndPipelineParallelFollowTheSingleWorkerLossCurve() throws {
        let steps = 10
        let reference = try run(workers: 1, pp: 1, microBatches: 1, zero: 0, steps: steps + 2).losses
        let (l, log) = try run(workers: 4, pp: 2, microBatches: 2, cp: 2, zero: 1, steps: steps)
        XCTAssert(log.contains("(mesh dp 1 x cp 2 x pp 2)"), log)
        XCTAssertEqual(l.count, steps)
        for s in 1...steps {
            XCTAssertEqual(l[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!), "cp 2 x pp 2: step \(s)")
        }
        let resumed = try run(workers: 1, pp: 1, microBatches: 1, zero: 0, steps: steps + 2, name: "cp2pp2-to-1",
                              resume: "w4-pp2-m2-cp2-z1/checkpoints/step-0000010").losses
        XCTAssertEqual(Set(resumed.keys), Set(11...(steps + 2)))
        for s in 11...(steps + 2) {
            XCTAssertEqual(resumed[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!), "resumed from cp 2 x pp 2 on 1 worker: step \(s)")
        }
    }

    /// cp x pp that does not divide the slots is refused before any worker starts.
    func testPipelineParallelValidation() throws {
        let hosts = scratch.appendingPathComponent("hosts-3.txt").path
        try "localhost slots=3\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        var (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
                                                ["launch", "--nodes", hosts, "--config", try tinyConfig(pp: 2, microBatches: 2), "--steps", "1",
                                                 "--run-dir", scratch.appendingPathComponent("bad").path, "--quiet"], timeout: 60, cwd: repoRoot.path)
        XCTAssertNotEqual(status, 0)
        XCTAssert((out + err).contains("train.pipeline_parallel 2 does not divide the 3 slots"), out + err)
        (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
                                            ["launch", "--nodes", hosts, "--config", try tinyConfig(pp: 1, microBatches: 1, cp: 2), "--steps", "1",
                                             "--run-dir", scratch.appendingPathComponent("bad-cp").path, "--quiet"], timeout: 60, cwd: repoRoot.path)
        XCTAssertNotEqual(status, 0)
        XCTAssert((out + err).contains("train.context_parallel 2 does not divide the 3 slots"), out + err)
    }
}
