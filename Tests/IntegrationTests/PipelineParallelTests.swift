import Foundation
import XCTest
import _HVTestSupport

/// Pipeline-parallel training through `hv-coord launch`: the tiny run's blocks cut into pp
/// stages (1F1B over micro-batches, activations and gradients over loopback TCP) follows the
/// single-worker loss curve.
final class PipelineParallelTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-pp-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// configs/runs/tiny.yaml with `train.pipeline_parallel: pp` and `train.micro_batches: m`.
    func tinyConfig(pp: Int, microBatches m: Int) throws -> String {
        var text = try String(contentsOf: repoRoot.appendingPathComponent("configs/runs/tiny.yaml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.path)/configs/models/tiny.yaml")
        text = text.replacingOccurrences(of: "\ntrain:\n", with: "\ntrain:\n  pipeline_parallel: \(pp)\n  micro_batches: \(m)\n")
        let p = scratch.appendingPathComponent("tiny-pp\(pp)-m\(m).yaml").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// Losses by step of one launch (run directory `name`) and rank 0's log.
    @discardableResult
    func run(workers: Int, pp: Int, microBatches m: Int, zero: Int, steps: Int, name: String? = nil,
             resume: String? = nil) throws -> (losses: [Int: Double], log: String) {
        let hosts = scratch.appendingPathComponent("hosts-\(workers).txt").path
        try "localhost slots=\(workers)\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let dir = scratch.appendingPathComponent(name ?? "w\(workers)-pp\(pp)-m\(m)-z\(zero)").path
        var args = ["launch", "--nodes", hosts, "--config", try tinyConfig(pp: pp, microBatches: m), "--steps", "\(steps)",
                    "--zero", "\(zero)", "--run-dir", dir, "--quiet"]
        if let resume { args += ["--resume", scratch.appendingPathComponent(resume).path] }
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), args, timeout: 180, cwd: repoRoot.path)
        XCTAssertEqual(status, 0, "\(workers) workers, pp \(pp), m \(m), ZeRO \(zero): \((out + err).suffix(2000))")
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        var losses: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            losses[obj["step"] as! Int] = (obj["loss"] as! Double)
        }
        return (losses, (try? String(contentsOfFile: dir + "/logs/rank-0.log", encoding: .utf8)) ?? "")
    }

    /// 10 steps: 1 worker; pp 2 over 4 micro-batches; pp 3 over 2 with ZeRO-1; dp 2 x pp 2 over
    /// 2 with ZeRO-2; and 5 steps at pp 2 resumed for 5 on one worker.
    func testPipelineParallelFollowsTheSingleWorkerLossCurve() throws {
        let steps = 10
        let reference = try run(workers: 1, pp: 1, microBatches: 1, zero: 0, steps: steps).losses
        XCTAssertEqual(reference.count, steps)
        for (workers, pp, m, zero) in [(2, 2, 4, 0), (3, 3, 2, 1), (4, 2, 2, 2)] {
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

    /// cp x pp that does not divide the slots, and ZeRO-3 with pp, are refused before any worker starts.
    func testPipelineParallelValidation() throws {
        let hosts = scratch.appendingPathComponent("hosts-3.txt").path
        try "localhost slots=3\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        var (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
                                                ["launch", "--nodes", hosts, "--config", try tinyConfig(pp: 2, microBatches: 2), "--steps", "1",
                                                 "--run-dir", scratch.appendingPathComponent("bad").path, "--quiet"], timeout: 60, cwd: repoRoot.path)
        XCTAssertNotEqual(status, 0)
        XCTAssert((out + err).contains("train.pipeline_parallel 2 does not divide the 3 slots"), out + err)
        let hosts2 = scratch.appendingPathComponent("hosts-2.txt").path
        try "localhost slots=2\n".write(toFile: hosts2, atomically: true, encoding: .utf8)
        (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
                                            ["launch", "--nodes", hosts2, "--config", try tinyConfig(pp: 2, microBatches: 2), "--steps", "1",
                                             "--zero", "3", "--run-dir", scratch.appendingPathComponent("bad3").path, "--quiet"], timeout: 60, cwd: repoRoot.path)
        XCTAssertNotEqual(status, 0)
        XCTAssert((out + err).contains("runs with --zero 0, 1 or 2"), out + err)
    }
}
