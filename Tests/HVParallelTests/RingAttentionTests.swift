import Foundation
import XCTest
import _HVTestSupport

/// Ring attention across real processes over ZeroMQ TCP on loopback: each rank is an
/// `hv-testpeer ring-attention` process that compares its shard of the forward output and of
/// dQ/dK/dV (text gradients summed over ranks) with full single-process attention, for video
/// lengths not divisible by cp, with and without a text mask, without text, and with an empty
/// shard (3 video tokens on 4 ranks); each with the blocks travelling whole and in chunks of
/// 4, 5 and 1 keys (chunks that do not divide the shards). See Sources/hv-testpeer/RingAttentionPeer.swift.
final class RingAttentionTests: XCTestCase {
    func runRing(world: Int) throws {
        let exe = try locateExecutable("hv-testpeer")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hv-ring-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        final class Results: @unchecked Sendable { var value: [(Int32, String, String)?]; init(_ n: Int) { value = Array(repeating: nil, count: n) } }
        let results = Results(world)
        let lock = NSLock()
        // One thread per rank (concurrentPerform would run only as many as there are cores,
        // and the ranks must all be up for the rendezvous).
        let group = DispatchGroup()
        for r in 0..<world {
            group.enter()
            Thread.detachNewThread {
                let res = try? runProcess(exe, ["ring-attention", "--rank", "\(r)", "--world", "\(world)", "--dir", dir], timeout: 120)
                lock.withLock { results.value[r] = res }
                group.leave()
            }
        }
        group.wait()
        var cases = 0
        for r in 0..<world {
            guard let (status, out, err) = results.value[r] else { XCTFail("rank \(r) did not run"); continue }
            XCTAssertEqual(status, 0, "rank \(r) of \(world) failed: \(err)")
            for line in out.split(separator: "\n") where line.hasPrefix("RESULT ") {
                cases += 1
                for field in line.split(separator: " ").dropFirst(2) {
                    let kv = field.split(separator: "=")
                    guard kv.count == 2, kv[0] != "shard" else { continue }
                    guard let e = Float(kv[1]) else { XCTFail("bad field \(field) in \(line)"); continue }
                    XCTAssertLessThan(e, 1e-5, "cp=\(world) rank \(r): \(line)")
                }
            }
        }
        XCTAssertEqual(cases, 16 * world, "every rank reports every case (4 inputs x 4 chunk lengths)")
    }

    /// A peer that leaves mid-run: the model's attention (which cannot throw) returns zeros, and
    /// the failure surfaces at `takeFailure` naming the rank and the pass; no crash, no hang.
    func testDeadPeerIsAnErrorNotACrash() throws {
        let exe = try locateExecutable("hv-testpeer")
        for phase in ["forward", "backward"] {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hv-ring-dead-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            final class Box: @unchecked Sendable { var value: (Int32, String, String)? }
            let peer = Box(), group = DispatchGroup()
            group.enter()
            Thread.detachNewThread {
                peer.value = try? runProcess(exe, ["ring-attention-dead-peer", "--rank", "1", "--dir", dir, "--phase", phase], timeout: 60)
                group.leave()
            }
            let (status, out, err) = try runProcess(exe, ["ring-attention-dead-peer", "--rank", "0", "--dir", dir, "--phase", phase], timeout: 60)
            group.wait()
            XCTAssertEqual(peer.value?.0, 0, "rank 1 (\(phase)): \(peer.value?.2 ?? "did not run")")
            XCTAssertEqual(status, 0, "rank 0 (\(phase)) crashed or failed: \(err)")
            XCTAssert(out.contains("ZEROS \(phase) true"), out)
            XCTAssert(out.contains("FAILURE \(phase) context-parallel (ring) attention \(phase) on rank 0"), out)
        }
    }

    func testRingAttentionTwoRanks() throws { try runRing(world: 2) }
    func testRingAttentionThreeRanks() throws { try runRing(world: 3) }
    func testRingAttentionFourRanks() throws { try runRing(world: 4) }
}
