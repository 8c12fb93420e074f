import Foundation
import XCTest
import _HVTestSupport

let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Multi-process runs through `hv-coord launch`: real worker processes on loopback TCP.
final class LaunchTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-launch-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func hosts(_ text: String) throws -> String {
        let p = scratch.appendingPathComponent("hosts-\(UUID().uuidString.prefix(6)).txt").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func launch(_ args: [String], timeout: TimeInterval = 120) throws -> (Int32, String) {
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"), ["launch"] + args, timeout: timeout, cwd: repoRoot.path)
        return (status, out + err)
    }

    func losses(_ runDir: String, key: String = "loss") throws -> [Double] {
        let text = try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map {
            let obj = try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            return obj[key] as! Double
        }
    }

    /// The same 20-step run on 1, 2 and 4 workers, ZeRO stages 0-3: same loss curve within 1e-5
    /// relative, and the same global gradient norm at step 1 (Adam's updates hardly depend on the
    /// gradient's scale, so the losses alone would miss gradients summed instead of averaged).
    func testWorkersAndZeroStagesGiveTheSameLossCurve() throws {
        var reference: [Double]? = nil, referenceNorm: Double? = nil
        for world in [1, 2, 4] {
            let h = try hosts("localhost slots=\(world)\n")
            for stage in 0...3 {
                let dir = scratch.appendingPathComponent("w\(world)-z\(stage)").path
                let (status, log) = try launch(["--nodes", h, "--config", "configs/runs/tiny.yaml", "--steps", "20", "--zero", "\(stage)",
                                                 "--run-dir", dir, "--quiet"])
                XCTAssertEqual(status, 0, "world \(world) stage \(stage): \(log.suffix(2000))")
                let l = try losses(dir)
                XCTAssertEqual(l.count, 20)
                let norm = try XCTUnwrap(try losses(dir, key: "grad_norm").first)
                if let ref = referenceNorm {
                    XCTAssertEqual(norm, ref, accuracy: 1e-5 * ref, "world \(world) stage \(stage): step-1 gradient norm")
                } else { referenceNorm = norm; XCTAssertGreaterThan(norm, 0) }
                if let ref = reference {
                    for (a, b) in zip(l, ref) { XCTAssertEqual(a, b, accuracy: 1e-5 * abs(b), "world \(world) stage \(stage)") }
                } else { reference = l }
                XCTAssert(FileManager.default.fileExists(atPath: dir + "/logs/rank-\(world - 1).log"))
            }
        }
        // The run learns something in 20 steps (a sanity check on the reference itself).
        XCTAssertLessThan(reference!.last!, reference!.first!)
    }

    /// A worker that never joins: the launch fails within the rendezvous timeout, naming its rank and host,
    /// and leaves no process behind.
    func testWorkerThatNeverJoinsFailsTheLaunch() throws {
        let h = try hosts("localhost slots=2\n")
        let t0 = Date()
        let template = "sh -c 'test {rank} = 1 && exec sleep 31.7 || exec \"$0\" \"$@\"' {cmd}"
        let (status, log) = try launch(["--nodes", h, "--config", "configs/runs/tiny.yaml", "--steps", "2", "--run-dir",
                                         scratch.appendingPathComponent("never").path, "--template", template, "--rendezvous-timeout", "3", "--quiet"],
                                        timeout: 30)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("rank 1 on localhost never joined"), log)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 15)
        let (_, ps, _) = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "ps -eo args | grep 'sleep 31.7' | grep -v grep || true"], timeout: 5)
        XCTAssertEqual(ps.trimmingCharacters(in: .whitespacesAndNewlines), "", "left behind: \(ps)")
    }

    /// An unreachable host: the launch fails fast and names it.
    func testMissingHostFailsWithItsName() throws {
        let h = try hosts("localhost slots=1\nno-such-host.invalid slots=1\n")
        let (status, log) = try launch(["--nodes", h, "--config", "configs/runs/tiny.yaml", "--steps", "2", "--run-dir",
                                         scratch.appendingPathComponent("missing").path, "--rendezvous-timeout", "20", "--quiet"], timeout: 60)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("no-such-host.invalid"), log)
    }

    /// Command-line overrides are validated like the config's fields, before any worker starts
    /// (a zero batch used to crash the workers).
    func testBadOverridesAreRefused() throws {
        let h = try hosts("localhost slots=2\n")
        for (args, fragment) in [(["--batch-size", "0"], "--batch-size must be >= 1"), (["--steps=-1"], "--steps must be >= 0")] {
            let (status, log) = try launch(["--nodes", h, "--config", "configs/runs/tiny.yaml"] + args, timeout: 20)
            XCTAssertNotEqual(status, 0)
            XCTAssert(log.contains(fragment), log)
        }
        let (status, log) = try launch(["--nodes", h, "--config", "configs/runs/vae-tiny.yaml", "--batch-size", "0"], timeout: 20)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("--batch-size must be >= 1"), log)
    }

    func testMalformedHostsFileNamesFileAndLine() throws {
        let h = try hosts("localhost slots=2\nbad line here\n")
        let (status, log) = try launch(["--nodes", h, "--config", "configs/runs/tiny.yaml"], timeout: 20)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains(h) && log.contains("line 2"), log)
    }
}

/// A run across three "hosts" — network namespaces with their own interfaces and addresses
/// (cluster/netns-rig.sh) — with the coordinator in the root namespace.
final class NetnsLaunchTests: XCTestCase {
    func testRunAcrossThreeNamespacedHosts() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to create network namespaces (ip netns)") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip")
            || FileManager.default.isExecutableFile(atPath: "/usr/bin/ip") else { throw XCTSkip("iproute2's `ip` is not installed") }
        let rig = repoRoot.appendingPathComponent("cluster/netns-rig.sh").path
        let sh = URL(fileURLWithPath: "/bin/bash")
        let (up, upOut, upErr) = try runProcess(sh, [rig, "up", "3"], timeout: 60)
        defer { _ = try? runProcess(sh, [rig, "down"], timeout: 60) }
        guard up == 0 else { throw XCTSkip("could not create the namespace rig here: \(upErr.suffix(400)) \(upOut.suffix(200))") }
        let run = FileManager.default.temporaryDirectory.appendingPathComponent("hv-netns-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: run) }
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
            ["launch", "--nodes", "cluster/hosts.netns", "--config", "configs/runs/tiny.yaml", "--steps", "4", "--zero", "2",
             "--batch-size", "6", "--coord-address", "10.77.0.1", "--template", "ip netns exec {host} {cmd}", "--run-dir", run, "--rendezvous-timeout", "30"],
            timeout: 120, cwd: repoRoot.path)
        let log = out + err
        XCTAssertEqual(status, 0, String(log.suffix(3000)))
        XCTAssert(log.contains("all 3 workers joined"), log)
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)
        XCTAssertEqual(metrics.split(separator: "\n").count, 4)
    }
}
