import Foundation
import HVTensor
import HVComm
import XCTest


/// Random and mutated data-plane frames against the parser and a live inbox.
final class WireFormatFuzzTests: XCTestCase {
    static func mutate(_ frame: [UInt8], _ rng: inout HVRandom) -> [UInt8] {
        var f = frame
        switch Int.random(in: 0..<6, using: &rng) {
        case 0: if !f.isEmpty { f[Int.random(in: 0..<f.count, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng) }
        case 1: f = Array(f.prefix(Int.random(in: 0...f.count, using: &rng)))
        case 2: f += (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 3: if !f.isEmpty { f[Int.random(in: 0..<f.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
        case 4: for i in 20..<min(28, f.count) { f[i] = 0xFF }  // huge chunk/count
        default: f = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        return f
    }

    /// 50,000 frames: the parser never crashes, accepts exactly the 28-byte frames with our
    /// magic and known kind/dtype, and what it accepts re-encodes to the same bytes.
    func testParserOnRandomAndMutatedHeaders() {
        let seed: UInt64 = 20_261_126
        var rng = HVRandom(seed: seed)
        var accepted = 0, rejected = 0
        for i in 0..<50_000 {
            let valid = WireHeader(source: Int.random(in: 0..<64, using: &rng), kind: [.reduceScatter, .allGather, .broadcast, .pointToPoint, .barrier].randomElement(using: &rng)!,
                                   dtype: Bool.random(using: &rng) ? .float32 : .bfloat16, sequence: rng.next(), chunk: Int(UInt32.random(in: 0...UInt32.max, using: &rng)),
                                   count: Int(UInt32.random(in: 0...UInt32.max, using: &rng)))
            let frame = i % 10 == 0 ? valid.bytes : Self.mutate(valid.bytes, &rng)
            switch frame.withUnsafeBytes({ WireHeader.parse($0) }) {
            case .success(let h):
                accepted += 1
                XCTAssertEqual(frame.count, WireHeader.size, "seed \(seed) frame \(i)")
                XCTAssertEqual(h.bytes, frame, "seed \(seed) frame \(i): accepted frame does not re-encode to itself")
            case .failure(let e):
                rejected += 1
                XCTAssert("\(e)".hasPrefix("malformed data-plane message"), "\(e)")
            }
        }
        XCTAssertGreaterThan(accepted, 5_000)
        XCTAssertGreaterThan(rejected, 20_000)
    }

    /// 3,000 random multipart messages (1-4 frames of mutated headers and payloads) pushed into a
    /// live inbox over inproc: every receive either throws a protocol violation or timeout, never
    /// accepts garbage as data and never crashes; afterwards a real peer's data still arrives.
    func testInboxOnRandomMultipartMessages() throws {
        let ctx = try ZMQContext(defaultLingerMilliseconds: 0)
        defer { ctx.close() }
        let tag = UUID().uuidString
        let comm = try ZMQRingCommunicator(rank: 0, worldSize: 2, bind: "inproc://fuzz-\(tag)", context: ctx, timeoutSeconds: 0.02)
        defer { comm.close() }
        comm.maxStashedPerPeer = 64
        let rogue = try ctx.makeSocket(.push)
        defer { rogue.close() }
        try rogue.connect("inproc://fuzz-\(tag)")
        var rng = HVRandom(seed: 77)
        var outcomes: [String: Int] = [:]
        var buffer = [Float](repeating: 0, count: 8)
        for i in 0..<3_000 {
            let h = WireHeader(source: Int.random(in: 0...2, using: &rng), kind: .pointToPoint, dtype: .float32, sequence: 5, chunk: 0, count: 8)
            var frames: [[UInt8]] = []
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                frames.append(Bool.random(using: &rng) ? Self.mutate(h.bytes, &rng) : Self.mutate([UInt8](repeating: 1, count: 32), &rng))
            }
            try rogue.sendMultipart(frames)
            do {
                try buffer.withUnsafeMutableBufferPointer { try comm.receive($0.baseAddress!, count: 8, from: 1, tag: 5) }
                // Only a well-formed message from rank 1 with tag 5 and 8 floats may be accepted.
                XCTAssertEqual(frames.count, 2, "message \(i) accepted")
                XCTAssertEqual(frames[1].count, 32, "message \(i) accepted")
                outcomes["accepted well-formed", default: 0] += 1
            } catch let e as CommError {
                switch e {
                case .protocolViolation: outcomes["violation", default: 0] += 1
                case .timeout: outcomes["timeout", default: 0] += 1
                case .transport: XCTFail("message \(i): \(e)")
                }
            }
        }
        XCTAssertGreaterThan(outcomes["violation", default: 0], 1_000, "\(outcomes)")
        // The communicator is still usable: a real rank-1 message gets through.
        let good = WireHeader(source: 1, kind: .pointToPoint, dtype: .float32, sequence: 6, chunk: 0, count: 2)
        let fresh = try ZMQRingCommunicator(rank: 0, worldSize: 2, bind: "inproc://fuzz2-\(tag)", context: ctx, timeoutSeconds: 2)
        defer { fresh.close() }
        let peer = try ctx.makeSocket(.push)
        defer { peer.close() }
        try peer.connect("inproc://fuzz2-\(tag)")
        try peer.sendMultipart([good.bytes, [Float(3), Float(4)].withUnsafeBytes { Array($0) }])
        var two = [Float](repeating: 0, count: 2)
        try two.withUnsafeMutableBufferPointer { try fresh.receive($0.baseAddress!, count: 2, from: 1, tag: 6) }
        XCTAssertEqual(two, [3, 4])
    }
}
