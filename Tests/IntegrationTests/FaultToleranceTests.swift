import Foundation
import HVCheckpoint
import HVTrain
import XCTest
import _HVTestSupport

/// Worker and coordinator deaths through real processes.
final class FaultToleranceTests: XCTestCase {
    var scratch: URL!
    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-fault-\(getpid())-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func config() throws -> String {
        var text = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path, encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.appendingPathComponent("configs/models/tiny.yaml").path)")
        let p = scratch.appendingPathComponent("run.yaml").path
        try (text + "\ncheckpoint:\n  every: 5\n  keep: 10\n").write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func weights(_ dir: String) throws -> [String: [Float]] {
        let m = try Checkpointing.verify(dir)
        return try Checkpointing.readUnits(dir, m).mapValues { $0.weights + $0.expAvg + $0.expAvgSq }
    }

    /// SIGKILL a random worker at a random step, in several seeded trials: with --max-restarts
    /// the run finishes on its own from the latest checkpoint, and its final state equals an
    /// uninterrupted run's with the same checkpoint schedule (every 5 steps).
    func testKilledWorkerRestartsAndMatchesUninterruptedRun() throws {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let cfg = try config()
        let ref = scratch.appendingPathComponent("ref").path
        let exe = try locateExecutable("hv-coord")
        let (s0, o0, e0) = try runProcess(exe, ["launch", "--nodes", hosts, "--config", cfg, "--steps", "30", "--run-dir", ref, "--quiet"],
                                         timeout: 300, cwd: repoRoot.path)
        XCTAssertEqual(s0, 0, o0 + e0)
        let expected = try weights(ref + "/checkpoints/step-0000030")
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<3 {
            let run = scratch.appendingPathComponent("run-\(trial)").path
            let killAfter = Int.random(in: 6...18, using: &rng), rank = Int.random(in: 0...1, using: &rng)
            let p = Process()
            p.executableURL = exe
            p.arguments = ["launch", "--nodes", hosts, "--config", cfg, "--steps", "30", "--run-dir", run, "--quiet", "--max-restarts", "2"]
            p.currentDirectoryURL = repoRoot
            let errPipe = Pipe()
            p.standardError = errPipe
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            // Wait until `killAfter` steps are logged, then kill one worker.
            let deadline = Date().addingTimeInterval(240)
            func stepsLogged() -> Int {
                ((try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").count
            }
            while stepsLogged() < killAfter && p.isRunning && Date() < deadline { usleep(5_000) }
            _ = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "pkill -9 -f -- '[-]-rank \(rank) --world 2 --config \(cfg)' || true"], timeout: 10)
            let end = Date().addingTimeInterval(300)
            while p.isRunning && Date() < end { usleep(100_000) }
            if p.isRunning { p.terminate() }
            p.waitUntilExit()
            let log = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let what = "trial \(trial): rank \(rank) killed after \(killAfter) steps"
            XCTAssertEqual(p.terminationStatus, 0, "\(what): \(log.suffix(2000))")
            XCTAssert(log.contains("restart 1/2"), "\(what): the kill should have triggered a restart: \(log.suffix(2000))")
            XCTAssertEqual(try weights(run + "/checkpoints/step-0000030"), expected, what)
        }
    }

    /// A worker that stops answering (SIGSTOP, so its sockets stay open): the coordinator names it
    /// within the heartbeat timeout, stops the run with a non-zero exit and leaves no process behind.
    func testStoppedWorkerIsNamedWithinTheHeartbeatTimeout() throws {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let cfg = try config()
        let run = scratch.appendingPathComponent("stopped").path
        let p = Process()
        p.executableURL = try locateExecutable("hv-coord")
        p.arguments = ["launch", "--nodes", hosts, "--config", cfg, "--steps", "100000", "--run-dir", run, "--quiet",
                       "--heartbeat-timeout", "3"]
        p.currentDirectoryURL = repoRoot
        let errPipe = Pipe()
        p.standardError = errPipe
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(120)
        // Training is under way (the file exists from the launch on, so wait for logged steps).
        func stepsLogged() -> Int {
            ((try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        while stepsLogged() < 3 && p.isRunning && Date() < deadline { usleep(20_000) }
        // "[-]" keeps the pattern from matching the shell that runs pkill.
        let pattern = "[-]-rank 1 --world 2 --config \(cfg)"
        _ = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "pkill -STOP -f -- '\(pattern)' || true"], timeout: 10)
        let stoppedAt = Date()
        while p.isRunning && Date().timeIntervalSince(stoppedAt) < 60 { usleep(50_000) }
        let detected = Date().timeIntervalSince(stoppedAt)
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        // Let a stopped worker die if the coordinator's SIGKILL did not reach it yet.
        _ = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "pkill -CONT -f -- '\(pattern)' || true"], timeout: 10)
        let log = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertNotEqual(p.terminationStatus, 0, log)
        XCTAssert(log.contains("rank 1") && log.contains("no heartbeat"), String(log.suffix(2000)))
        XCTAssertLessThan(detected, 60, "not detected within a minute (timeout 3 s)")
        usleep(500_000)
        let (_, left, _) = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "pgrep -f -- '[-]-config \(cfg)' || true"], timeout: 10)
        XCTAssertEqual(left.trimmingCharacters(in: .whitespacesAndNewlines), "", "worker processes left behind")
    }

    func testWorkersExitWhenCoordinatorDies() throws {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let run = scratch.appendingPathComponent("orphans").path
        let p = Process()
        p.executableURL = try locateExecutable("hv-coord")
        p.arguments = ["launch", "--nodes", hosts, "--config", try config(), "--steps", "100000", "--run-dir", run, "--quiet",
                       "--heartbeat-timeout", "4"]
        p.currentDirectoryURL = repoRoot
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: run + "/checkpoints/latest") && Date() < deadline { usleep(50_000) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        var left = ""
        let end = Date().addingTimeInterval(15)
        repeat {
            usleep(500_000)
            left = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "ps -eo pid,args | grep -- '--run-dir \(run)' | grep -v grep || true"], timeout: 5).1
        } while !left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty && Date() < end
        XCTAssertEqual(left.trimmingCharacters(in: .whitespacesAndNewlines), "", "orphaned workers: \(left)")
    }
}
