import Foundation
import XCTest
import _HVTestSupport

/// hv-sample on checkpoints made in the test run.
final class SampleTests: XCTestCase {
    var scratch: URL!
    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-sample-\(getpid())-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func run(_ tool: String, _ args: [String], timeout: TimeInterval = 120) throws -> (Int32, String) {
        let (s, o, e) = try runProcess(try locateExecutable(tool), args, timeout: timeout, cwd: repoRoot.path)
        return (s, o + e)
    }

    /// Same seed, same video bit for bit; the sharded checkpoint and its consolidated file give
    /// identical videos; another seed gives another video; bad sizes are rejected clearly.
    func testDeterministicAcrossCheckpointFormats() throws {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let runDir = scratch.appendingPathComponent("run").path
        var (status, log) = try run("hv-coord", ["launch", "--nodes", hosts, "--config", "configs/runs/tiny.yaml", "--steps", "10", "--zero", "3",
                                                 "--run-dir", runDir, "--quiet"])
        XCTAssertEqual(status, 0, log)
        let consolidated = scratch.appendingPathComponent("model.h5").path
        (status, log) = try run("hv-ckpt", ["consolidate", runDir, "--out", consolidated])
        XCTAssertEqual(status, 0, log)
        func sample(_ ckpt: String, seed: Int, out: String) throws -> Data {
            let p = scratch.appendingPathComponent(out).path
            let (s, l) = try run("hv-sample", ["--checkpoint", ckpt, "--prompt", "a blue circle moving up", "--seed", "\(seed)", "--steps", "8",
                                               "--guidance", "2", "--negative-prompt", "static", "--out", p])
            XCTAssertEqual(s, 0, l)
            XCTAssert(FileManager.default.fileExists(atPath: (p as NSString).deletingPathExtension + ".png"), "contact sheet")
            return try Data(contentsOf: URL(fileURLWithPath: p))
        }
        let a = try sample(consolidated, seed: 3, out: "a.mp4"), b = try sample(consolidated, seed: 3, out: "b.mp4")
        let c = try sample(runDir, seed: 3, out: "c.mp4"), d = try sample(consolidated, seed: 4, out: "d.mp4")
        XCTAssertEqual(a, b, "same seed, same bytes")
        XCTAssertEqual(a, c, "sharded checkpoint and consolidated file give the same video")
        XCTAssertNotEqual(a, d)
        let (bad, msg) = try run("hv-sample", ["--checkpoint", consolidated, "--prompt", "x", "--frames", "8", "--out",
                                               scratch.appendingPathComponent("bad.mp4").path])
        XCTAssertNotEqual(bad, 0)
        XCTAssert(msg.contains("1 + 4k"), msg)
    }
}
