import Foundation
import HVComm
import HVTrain
import XCTest
import _HVTestSupport

/// Rogue processes against a running job's every port (coordinator control socket, each
/// worker's data-plane inbox), through real processes and real sockets.
final class ClosedControlPlaneTests: XCTestCase {
    var scratch: URL!
    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-sec-\(getpid())-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    final class Sink: @unchecked Sendable {
        let lock = NSLock()
        var data = Data()
        var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
    }

    func setup() throws -> (hosts: String, config: String) {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        var text = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path, encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.appendingPathComponent("configs/models/tiny.yaml").path)")
        let cfg = scratch.appendingPathComponent("run.yaml").path
        try text.write(toFile: cfg, atomically: true, encoding: .utf8)
        return (hosts, cfg)
    }

    func losses(_ runDir: String) throws -> [Int: Double] {
        var out: [Int: Double] = [:]
        for l in try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as! [String: Any]
            out[o["step"] as! Int] = (o["loss"] as! Double)
        }
        return out
    }

    /// Starts `hv-coord launch` and waits until the workers have joined; returns the process,
    /// its stderr so far, the control endpoint and the workers' inbox endpoints.
    func start(_ args: [String]) throws -> (Process, Sink, String, [String]) {
        let p = Process()
        p.executableURL = try locateExecutable("hv-coord")
        p.arguments = args
        p.currentDirectoryURL = repoRoot
        let err = Pipe(), sink = Sink()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        readPipe(err) { d in sink.lock.withLock { sink.data.append(d) } }
        let deadline = Date().addingTimeInterval(60)
        while !sink.text.contains("data-plane inboxes:") {
            guard Date() < deadline, p.isRunning else { p.terminate(); XCTFail("no rendezvous: \(sink.text)"); throw XCTSkip("no rendezvous") }
            usleep(20_000)
        }
        let text = sink.text
        func after(_ marker: String) -> Substring {
            let r = text.range(of: marker)!
            return text[r.upperBound...].prefix { $0 != "\n" && $0 != ";" }
        }
        let control = String(after("; control ").split(separator: " ").first!)
        let inboxes = after("data-plane inboxes: ").split(separator: " ").map(String.init)
        return (p, sink, control, inboxes)
    }

    /// Runs rogue peers concurrently; each sends its garbage and exits (bounded by a timeout).
    func rogues(_ specs: [(endpoint: String, socket: String, serverKey: String?)], extra: [String] = []) throws {
        let exe = try locateExecutable("hv-testpeer")
        let group = DispatchGroup()
        let failures = Sink()
        for (i, s) in specs.enumerated() {
            var args = ["zmq-rogue", "--connect", s.endpoint, "--socket", s.socket, "--messages", "300", "--seed", "\(i + 1)"]
            if let k = s.serverKey { args += ["--curve-server-key", k] }
            let arguments = args + extra
            group.enter()
            Thread.detachNewThread {
                let r = Result { try runProcess(exe, arguments, timeout: 30) }
                if case .success(let (status, out, err)) = r, status == 0, out.hasPrefix("SENT") {} else {
                    failures.lock.withLock { failures.data.append(Data("rogue \(arguments): \(r)\n".utf8)) }
                }
                group.leave()
            }
        }
        group.wait()
        XCTAssertEqual(failures.text, "")
    }

    func finish(_ p: Process, timeout: TimeInterval = 120) -> Int32 {
        let end = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < end { usleep(50_000) }
        if p.isRunning { p.terminate(); XCTFail("launch did not finish within \(timeout)s") }
        p.waitUntilExit()
        usleep(100_000)
        return p.terminationStatus
    }

    /// With CurveZMQ (the default), rogues with no keys, or with the server's key but a client key
    /// of their own, connect to every port while the job trains: they are refused (and logged with
    /// their address), the run finishes and its losses equal an undisturbed run's, step by step.
    /// The run's keys sit in a 0600 file, never on a command line.
    func testRoguesAreRefusedAndLossesAreUnchanged() throws {
        guard ZMQ.has("curve") else { throw XCTSkip("libzmq built without CURVE") }
        let (hosts, cfg) = try setup()
        let ref = scratch.appendingPathComponent("ref").path, run = scratch.appendingPathComponent("run").path
        let steps = 150
        let (s0, o0, e0) = try runProcess(try locateExecutable("hv-coord"),
                                          ["launch", "--nodes", hosts, "--config", cfg, "--steps", "\(steps)", "--run-dir", ref, "--quiet"],
                                          timeout: 120, cwd: repoRoot.path)
        XCTAssertEqual(s0, 0, o0 + e0)

        let (p, sink, control, inboxes) = try start(["launch", "--nodes", hosts, "--config", cfg, "--steps", "\(steps)", "--run-dir", run, "--quiet"])
        XCTAssertEqual(inboxes.count, 2)
        // Each worker's inbox: TCP and, for peers on this host, an abstract Unix socket; rogues try both.
        XCTAssert(inboxes.allSatisfy { $0.hasPrefix("tcp://") && $0.contains(",ipc://@hv-") }, "\(inboxes)")
        let keyFiles = try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasPrefix(".hv-run-keys-") }
        XCTAssertEqual(keyFiles.count, 1)
        let keyPath = run + "/" + keyFiles[0]
        let attributes = try FileManager.default.attributesOfItem(atPath: keyPath)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        let keys = try RunKeys.read(path: keyPath, worldSize: 2)
        let ps = try runProcess(URL(fileURLWithPath: "/bin/ps"), ["-eo", "args"], timeout: 10).1
        XCTAssertFalse(ps.contains(keys.server!.secretKey) || keys.ranks!.contains { ps.contains($0.secretKey) }, "a secret key is visible in ps")

        var specs: [(endpoint: String, socket: String, serverKey: String?)] = [(control, "dealer", nil), (control, "dealer", keys.server!.publicKey)]
        for ep in inboxes.flatMap({ $0.split(separator: ",").map(String.init) }) { specs += [(ep, "push", nil), (ep, "push", keys.server!.publicKey)] }
        try rogues(specs)
        XCTAssert(p.isRunning, "the run ended before the rogues were done; make it longer")

        let status = finish(p)
        let log = sink.text
        XCTAssertEqual(status, 0, String(log.suffix(3000)))
        XCTAssert(log.contains("control socket refused a CURVE connection from 127.0.0.1"), String(log.suffix(3000)))
        for r in 0..<2 {
            let rankLog = try String(contentsOfFile: run + "/logs/rank-\(r).log", encoding: .utf8)
            XCTAssert(rankLog.contains("data-plane inbox: refused a CURVE connection from 127.0.0.1"), "rank \(r): \(rankLog.suffix(2000))")
        }
        XCTAssertEqual(try losses(ref), try losses(run), "the rogues changed the run")
        XCTAssertFalse(FileManager.default.fileExists(atPath: keyPath), "the key file outlived the run")
    }

    /// The HMAC fallback (forced with --auth-mechanism hmac): the run trains as without it, a
    /// rogue with a forged token or none is refused on every port and logged.
    func testHMACFallbackRunRefusesForgedTokens() throws {
        let (hosts, cfg) = try setup()
        let ref = scratch.appendingPathComponent("ref").path, run = scratch.appendingPathComponent("hmac").path
        let steps = 100
        let (s0, o0, e0) = try runProcess(try locateExecutable("hv-coord"),
                                          ["launch", "--nodes", hosts, "--config", cfg, "--steps", "\(steps)", "--run-dir", ref, "--quiet"],
                                          timeout: 120, cwd: repoRoot.path)
        XCTAssertEqual(s0, 0, o0 + e0)
        let (p, sink, control, inboxes) = try start(["launch", "--nodes", hosts, "--config", cfg, "--steps", "\(steps)", "--run-dir", run, "--quiet",
                                                     "--auth-mechanism", "hmac"])
        XCTAssert(sink.text.contains("HMAC shared-secret authentication on"), sink.text)
        let forged = RunKeys.hmacToken(secret: String(repeating: "f", count: 64), rank: 0)
        var specs: [(endpoint: String, socket: String, serverKey: String?)] = [(control, "dealer", nil)]
        for ep in inboxes.flatMap({ $0.split(separator: ",").map(String.init) }) { specs.append((ep, "push", nil)) }
        try rogues(specs, extra: ["--plain-user", "rank-0", "--plain-password", forged])
        try rogues(specs)
        XCTAssert(p.isRunning, "the run ended before the rogues were done; make it longer")
        let status = finish(p)
        XCTAssertEqual(status, 0, String(sink.text.suffix(3000)))
        XCTAssert(sink.text.contains("control socket refused a PLAIN connection from 127.0.0.1"), String(sink.text.suffix(3000)))
        let rankLog = try String(contentsOfFile: run + "/logs/rank-1.log", encoding: .utf8)
        XCTAssert(rankLog.contains("data-plane inbox: refused a PLAIN connection from 127.0.0.1"), String(rankLog.suffix(2000)))
        XCTAssertEqual(try losses(ref), try losses(run), "the rogues changed the run")
    }

    /// With --insecure-no-auth nothing stops a rogue from connecting, but nothing it sends is used
    /// unchecked: garbage on the control socket is ignored and logged with the sender's address,
    /// and garbage in a worker's inbox fails the run with an error naming the sender — promptly,
    /// with a non-zero exit, never a crash or a hang.
    func testWithoutAuthGarbageIsIgnoredOrFailsTheRunNamingThePeer() throws {
        let (hosts, cfg) = try setup()
        let run = scratch.appendingPathComponent("insecure").path
        let (p, sink, control, inboxes) = try start(["launch", "--nodes", hosts, "--config", cfg, "--steps", "100000", "--run-dir", run,
                                                     "--quiet", "--insecure-no-auth"])
        try rogues([(control, "dealer", nil)])
        usleep(500_000)
        XCTAssert(p.isRunning, "control-plane garbage must not stop the run: \(sink.text.suffix(3000))")
        XCTAssert(sink.text.contains("hv-coord: ignoring a control message"), String(sink.text.suffix(3000)))
        XCTAssert(sink.text.contains("127.0.0.1 (unauthenticated)"), String(sink.text.suffix(3000)))

        try rogues([(String(inboxes[1].split(separator: ",")[0]), "push", nil)])
        let status = finish(p, timeout: 60)
        let log = sink.text
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains("bad message") && log.contains("127.0.0.1 (unauthenticated)"), String(log.suffix(3000)))
        let leftovers = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "ps -eo args | grep -- '--run-dir \(run)' | grep -v grep || true"], timeout: 5).1
        XCTAssertEqual(leftovers.trimmingCharacters(in: .whitespacesAndNewlines), "", "workers left behind")
    }
}
