import Foundation
import HVCheckpoint
import HVTrain
import XCTest
import _HVTestSupport

/// A checkpoint directory that fills up or becomes unwritable in the middle of a run.
///
/// As root (this CI runs as root, where chmod does not stop writes) the checkpoint directory is a
/// small tmpfs mount: filled up for ENOSPC, remounted read-only for "unwritable" (EROFS). As
/// another user the unwritable case uses chmod 0555 and the full-disk case is skipped (mounting
/// needs root).
final class SaveErrorTests: XCTestCase {
    var scratch: URL!
    var mounts: [String] = []

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-save-\(getpid())-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for m in mounts.reversed() { _ = try? runProcess(URL(fileURLWithPath: "/bin/umount"), ["-l", m], timeout: 10) }
        _ = try? runProcess(URL(fileURLWithPath: "/bin/chmod"), ["-R", "u+w", scratch.path], timeout: 10)
        try? FileManager.default.removeItem(at: scratch)
    }

    func setup() throws -> (hosts: String, config: String) {
        let hosts = scratch.appendingPathComponent("hosts").path
        try "localhost slots=2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        var text = try String(contentsOfFile: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path, encoding: .utf8)
        text = text.replacingOccurrences(of: "model: ../models/tiny.yaml", with: "model: \(repoRoot.appendingPathComponent("configs/models/tiny.yaml").path)")
        let cfg = scratch.appendingPathComponent("run.yaml").path
        try (text + "\ncheckpoint:\n  every: 5\n  keep: 10\n").write(toFile: cfg, atomically: true, encoding: .utf8)
        return (hosts, cfg)
    }

    /// A tmpfs of `size` at `path` (root only); nil with the reason when it cannot be mounted.
    func mountTmpfs(_ path: String, size: String) throws -> String? {
        guard getuid() == 0 else { return "not root (uid \(getuid())): mounting a small tmpfs needs root" }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let (status, out, err) = try runProcess(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path], timeout: 10)
        guard status == 0 else { return "mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?): \(out)\(err)" }
        mounts.append(path)
        return nil
    }

    func launch(_ hosts: String, _ cfg: String, steps: Int, run: String, extra: [String] = []) throws -> (Int32, String) {
        let (status, out, err) = try runProcess(try locateExecutable("hv-coord"),
                                                ["launch", "--nodes", hosts, "--config", cfg, "--steps", "\(steps)", "--run-dir", run, "--quiet",
                                                 "--resume", "auto"] + extra, timeout: 120, cwd: repoRoot.path)
        return (status, out + err)
    }

    func latest(_ run: String) throws -> String {
        try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The disk fills up after the step-10 checkpoint: the save at step 15 fails with ENOSPC and the
    /// path, the run stops with a non-zero exit (no restart loop either), `latest` still names
    /// step 10 and that checkpoint verifies.
    func testFullDiskStopsTheRunAndKeepsTheLastCheckpoint() throws {
        let (hosts, cfg) = try setup()
        let run = scratch.appendingPathComponent("full").path
        if let why = try mountTmpfs(run + "/checkpoints", size: "48m") { throw XCTSkip(why) }
        var (status, log) = try launch(hosts, cfg, steps: 10, run: run)
        XCTAssertEqual(status, 0, String(log.suffix(3000)))
        XCTAssertEqual(try latest(run), "step-0000010")
        // Fill the file system to the last block.
        let filler = FileHandle(forWritingAtPath: { FileManager.default.createFile(atPath: run + "/checkpoints/filler", contents: nil); return run + "/checkpoints/filler" }())!
        let block = Data(count: 64 << 10)
        while (try? filler.write(contentsOf: block)) != nil {}
        try? filler.close()

        (status, log) = try launch(hosts, cfg, steps: 20, run: run, extra: ["--max-restarts", "2"])
        XCTAssertNotEqual(status, 0, "a full disk must stop the run")
        XCTAssert(log.contains("ENOSPC"), String(log.suffix(3000)))
        XCTAssert(log.contains(run + "/checkpoints/"), "the error should name the path: \(log.suffix(3000))")
        XCTAssert(log.contains("checkpoint save at step 15"), String(log.suffix(3000)))
        XCTAssertFalse(log.contains("restart 1/2"), "a full disk is not worth a restart")
        XCTAssertEqual(try latest(run), "step-0000010")
        XCTAssertEqual(try Checkpointing.verify(run + "/checkpoints/step-0000010").step, 10)
        let left = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").filter { $0.hasPrefix(".tmp-") }
        XCTAssertEqual(left, [], "the partial save should be cleaned up")
    }

    /// The checkpoint directory becomes unwritable: the failure names the path and errno (EROFS
    /// as root on a read-only mount, EACCES otherwise) and `latest` is untouched; with
    /// --continue-on-save-error the run logs it and trains to the end.
    func testUnwritableDirectoryStopsOrContinuesByFlag() throws {
        let (hosts, cfg) = try setup()
        let run = scratch.appendingPathComponent("ro").path
        let ckpt = run + "/checkpoints"
        let root = getuid() == 0
        if root, let why = try mountTmpfs(ckpt, size: "64m") { throw XCTSkip(why) }
        var (status, log) = try launch(hosts, cfg, steps: 10, run: run)
        XCTAssertEqual(status, 0, String(log.suffix(3000)))
        if root {
            let (s, o, e) = try runProcess(URL(fileURLWithPath: "/bin/mount"), ["-o", "remount,ro", ckpt], timeout: 10)
            XCTAssertEqual(s, 0, o + e)
        } else {
            XCTAssertEqual(chmod(ckpt, 0o555), 0)
        }
        let errnoName = root ? "EROFS" : "EACCES"

        (status, log) = try launch(hosts, cfg, steps: 20, run: run)
        XCTAssertNotEqual(status, 0)
        XCTAssert(log.contains(errnoName) && log.contains(ckpt), String(log.suffix(3000)))
        XCTAssert(log.contains("the previous checkpoint and `latest` are unchanged"), String(log.suffix(3000)))
        XCTAssertEqual(try latest(run), "step-0000010")

        (status, log) = try launch(hosts, cfg, steps: 20, run: run, extra: ["--continue-on-save-error"])
        XCTAssertEqual(status, 0, String(log.suffix(3000)))
        let rank0 = try String(contentsOfFile: run + "/logs/rank-0.log", encoding: .utf8)
        XCTAssert(rank0.contains("--continue-on-save-error: training goes on") && rank0.contains(errnoName), String(rank0.suffix(3000)))
        XCTAssert(log.contains("finished 20 steps"), String(log.suffix(3000)))
        XCTAssertEqual(try latest(run), "step-0000010")
        XCTAssertEqual(try Checkpointing.verify(ckpt + "/step-0000010").step, 10)
    }
}
