import Foundation
import HVScaling
import XCTest
import _HVTestSupport

/// End to end: real `hv-scaling sweep` processes launching real `hv-coord` runs of the local family.
final class SweepTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-sweep-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        try "localhost slots=1\n".write(to: scratch.appendingPathComponent("hosts.txt"), atomically: true, encoding: .utf8)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// A family of the local family's members `names` (same base run).
    func family(_ names: [String]) throws -> String {
        let local = repoRoot.appendingPathComponent("configs/scaling/local-family.yaml").path
        let lines = try String(contentsOfFile: local, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        var out = "version: 1\nname: test\nbase: \(repoRoot.appendingPathComponent("configs/scaling/base-local.yaml").path)\nmembers:\n"
        for (i, l) in lines.enumerated() where names.contains(where: { l.contains("- name: \($0) ") }) { out += l + "\n" + lines[i + 1] + "\n" }
        let p = scratch.appendingPathComponent("family.yaml").path
        try out.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// `timeout` only guards against a hang (the machine may be busy); speed is a benchmark's job.
    func scaling(_ args: [String], timeout: TimeInterval = 600) throws -> (Int32, String) {
        let (s, o, e) = try runProcess(try locateExecutable("hv-scaling"), args, timeout: timeout, cwd: repoRoot.path)
        return (s, o + e)
    }

    /// 3 budgets x 3 sizes: every run finishes, results.csv has all nine, the envelope falls with compute,
    /// and `fit` and `recommend` work on the directory.
    func testMiniSweepEndToEnd() throws {
        let fam = try family(["L0", "L1", "L2"])
        let out = scratch.appendingPathComponent("sweep").path
        let (status, log) = try scaling(["sweep", "--family", fam, "--budgets", "1e9,2e9,4e9", "--nodes", scratch.appendingPathComponent("hosts.txt").path,
                                         "--out", out, "--eval-samples", "16"])
        XCTAssertEqual(status, 0, String(log.suffix(3000)))
        XCTAssert(log.contains("9 runs: 9 done, 0 running, 0 interrupted, 0 pending"), String(log.suffix(2000)))
        let rows = try ResultsCSV.read(path: out + "/results.csv")
        XCTAssertEqual(rows.count, 9)
        XCTAssertEqual(Set(rows.map(\.budget)), [1e9, 2e9, 4e9])
        for r in rows {
            XCTAssertEqual(r.flops, r.budget, accuracy: 0.5 * Double(r.batch!) * r.flops_per_sample! + 1)
            XCTAssertNotNil(r.eval_loss)
            XCTAssert(r.loss > 0 && r.loss < 2)
        }
        let env = ScalingAnalysis.envelope(ScalingAnalysis.groups(rows))
        XCTAssertEqual(env.count, 3)
        for i in 1..<env.count { XCTAssertLessThan(env[i].loss, env[i - 1].loss, "envelope not monotone: \(env.map(\.loss))") }

        let (fs, flog) = try scaling(["fit", out, "--bootstrap", "100", "--parametric-bootstrap", "10"])
        XCTAssertEqual(fs, 0, flog)
        XCTAssert(flog.contains("(a) Loss-compute envelope"))
        for f in ["fit.json", "fit-report.txt", "scaling.svg", "scaling.png"] {
            XCTAssert(FileManager.default.fileExists(atPath: out + "/" + f), f)
        }
        let fit = try FitReport.readJSON(out + "/fit.json")
        XCTAssertLessThan(try XCTUnwrap(fit.lossVsCompute).b.value, 0, "loss should fall with compute")
        let (rs, rlog) = try scaling(["recommend", "--fit", out, "--compute", "8e9"])
        XCTAssertEqual(rs, 0, rlog)
        XCTAssert(rlog.contains("nearest family member: L"), rlog)
    }

    /// Interrupt a sweep (SIGTERM) during its second run; rerunning skips the finished run, resumes the
    /// interrupted one from its checkpoint and finishes the rest.
    func testInterruptedSweepResumes() throws {
        let fam = try family(["L1", "L2"])
        let out = scratch.appendingPathComponent("sweep").path
        let args = ["sweep", "--family", fam, "--budgets", "1.2e10,1.5e10", "--nodes", scratch.appendingPathComponent("hosts.txt").path,
                    "--out", out, "--eval-samples", "8"]
        let p = Process()
        p.executableURL = try locateExecutable("hv-scaling")
        p.arguments = args
        p.currentDirectoryURL = repoRoot
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let first = out + "/runs/L1-C1.2e10", second = out + "/runs/L2-C1.2e10"
        // Wait until the first run is done and the second has trained a few steps.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && p.isRunning {
            if FileManager.default.fileExists(atPath: first + "/result.json"),
               let m = try? String(contentsOfFile: second + "/metrics.jsonl", encoding: .utf8), m.split(separator: "\n").count >= 3 { break }
            usleep(10_000)
        }
        XCTAssert(p.isRunning, "the sweep finished before it could be interrupted")
        p.terminate()  // SIGTERM: forwarded to hv-coord, whose worker saves and stops
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: second + "/result.json"))
        let firstResult = try Data(contentsOf: URL(fileURLWithPath: first + "/result.json"))
        let firstLog = try String(contentsOfFile: first + "/launch.log", encoding: .utf8)
        let stoppedAt = readLossCurve(runDir: second).last?.step ?? 0
        XCTAssertGreaterThanOrEqual(stoppedAt, 3)

        let (status, log) = try scaling(["status", out])
        XCTAssertEqual(status, 0, log)
        XCTAssert(log.contains("1 done, 0 running, 1 interrupted, 2 pending"), log)

        let (s2, log2) = try scaling(args)
        XCTAssertEqual(s2, 0, String(log2.suffix(3000)))
        XCTAssert(log2.contains("resuming L2-C1.2e10"), log2)
        XCTAssertFalse(log2.contains("launching L1-C1.2e10"), "the finished run was redone")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: first + "/result.json")), firstResult)
        XCTAssertEqual(try String(contentsOfFile: first + "/launch.log", encoding: .utf8), firstLog)
        let secondLog = try String(contentsOfFile: second + "/launch.log", encoding: .utf8)
        XCTAssert(secondLog.contains("resuming from"), secondLog)
        let curve = readLossCurve(runDir: second)
        XCTAssertEqual(curve.map(\.step), Array(1...curve.count))
        XCTAssertEqual(curve.count, try XCTUnwrap(Sweep.readResult(out: out, run: "L2-C1.2e10")?.steps))
        XCTAssertEqual(try ResultsCSV.read(path: out + "/results.csv").count, 4)
    }
}
