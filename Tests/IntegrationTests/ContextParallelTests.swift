import Foundation
import XCTest
import _HVTestSupport

/// Context-parallel training through `hv-coord launch`: the tiny run with its video tokens
/// split over cp workers (ring attention over loopback TCP) follows the single-worker loss curve.
final class ContextParallelTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-cp-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// configs/runs/tiny.yaml with `train.context_parallel: cp` (model path made absolute).
    func tinyConfig(cp: Int) throws -> String {
        var text = try String(contentsOf: repoRoot.appendingPathComponent("configs/runs/tiny.yaml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.path)/configs/models/tiny.yaml")
        text = text.replacingOccurrences(of: "\ntrain:\n", with: "\ntrain:\n  context_parallel: \(cp)\n")
        let p = scratch.appendingPathComponent("tiny-cp\(cp).yaml").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// Losses by step of one launch (run directory `name`).
    @discardableResult
    func run(workers: Int, cp: Int, zero: Int, steps: Int, name: String? = nil, resume: String? = nil) throws -> [Int: Double] {
        let hosts = scratch.appendingPathComponent("hosts-\(workers).txt").path
        try "localhost slots=\(workers)\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let dir = scratch.appendingPathComponent(name ?? "w\(workers)-cp\(cp)-z\(zero)").path
        var args = ["launch", "--nodes", hosts, "--config", try tinyConfig(cp: cp), "--steps", "\(steps)", "--zero", "\(zero)",
                    "--run-dir", dir, "--quiet"]
        if let resume { args += ["--resume", scratch.appendingPathComponent(resume).path] }
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), args, timeout: 180, cwd: repoRoot.path)
        XCTAssertEqual(status, 0, "\(workers) workers, cp \(cp), ZeRO \(zero): \((out + err).suffix(2000))")
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        var losses: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            losses[obj["step"] as! Int] = (obj["loss"] as! Double)
        }
        return losses
    }

    /// 10 steps: 1 worker; cp 2; cp 3 (48 and 16 video tokens split unevenly) with ZeRO-1; dp 2 x cp 2
    /// with ZeRO-2; and 5 steps at cp 2 resumed for 5 on one worker.
    func testContextParallelFollowsTheSingleWorkerLossCurve() throws {
        let steps = 10
        let reference = try run(workers: 1, cp: 1, zero: 0, steps: steps)
        XCTAssertEqual(reference.count, steps)
        for (workers, cp, zero) in [(2, 2, 0), (3, 3, 1), (4, 4, 3), (4, 2, 2)] {
            let l = try run(workers: workers, cp: cp, zero: zero, steps: steps)
            XCTAssertEqual(l.count, steps, "\(workers) workers cp \(cp)")
            for s in 1...steps {
                XCTAssertEqual(l[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!), "\(workers) workers, cp \(cp), ZeRO \(zero): step \(s)")
            }
        }
        // A checkpoint of a dp 1 x cp 2 run resumes on one worker and continues the same curve.
        try run(workers: 2, cp: 2, zero: 0, steps: 5, name: "cp2-first-half")
        let resumed = try run(workers: 1, cp: 1, zero: 0, steps: steps, name: "cp1-second-half",
                              resume: "cp2-first-half/checkpoints/step-0000005")
        XCTAssertEqual(Set(resumed.keys), Set(6...steps))
        for s in 6...steps {
            XCTAssertEqual(resumed[s] ?? .nan, reference[s]!, accuracy: 1e-5 * abs(reference[s]!), "resumed from cp 2 on 1 worker: step \(s)")
        }
    }

    /// A cp degree that does not divide the slots is refused before any worker starts.
    func testContextParallelMustDivideTheSlots() throws {
        let hosts = scratch.appendingPathComponent("hosts-3.txt").path
        try "localhost slots=3\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
                                                ["launch", "--nodes", hosts, "--config", try tinyConfig(cp: 2), "--steps", "1",
                                                 "--run-dir", scratch.appendingPathComponent("bad").path, "--quiet"], timeout: 60, cwd: repoRoot.path)
        XCTAssertNotEqual(status, 0)
        XCTAssert((out + err).contains("context_parallel 2 does not divide the 3 slots"), out + err)
    }
}
