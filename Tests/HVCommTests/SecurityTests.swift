import Foundation
import HVComm
import XCTest

final class LogLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ s: String) { lock.withLock { lines.append(s) } }
    var all: [String] { lock.withLock { lines } }
}

/// CurveZMQ on the data plane, and garbage from rogue processes, through real sockets: the
/// ranks run on threads (each with its own context, as separate processes would), the rogue is
/// the `hv-testpeer zmq-rogue` process.
final class SecurityTests: XCTestCase {
    /// Two ranks with the run's keys over tcp; each rank on its own context and thread.
    func twoRanks(keys: RunKeys?, timeout: Double = 10, maxFrameBytes: Int = 256 << 20, logs: [LogLines])
        throws -> (comms: [ZMQRingCommunicator], contexts: [ZMQContext]) {
        let contexts = try (0..<2).map { _ in try ZMQContext() }
        let comms = try (0..<2).map { r in
            try ZMQRingCommunicator(rank: r, worldSize: 2, bind: "tcp://127.0.0.1:*", context: contexts[r], timeoutSeconds: timeout,
                                    auth: keys?.auth(rank: r), maxFrameBytes: maxFrameBytes, log: { logs[r].append($0) })
        }
        for c in comms { try c.connect(peers: comms.map(\.endpoint)) }
        return (comms, contexts)
    }

    func allReduce(_ comms: [ZMQRingCommunicator], count: Int = 1000) throws -> [[Float]] {
        let box = ResultBox<[Float]>(2)
        let group = DispatchGroup()
        for c in comms {
            group.enter()
            Thread.detachNewThread {
                var b = (0..<count).map { Float($0 + 1000 * c.rank) }
                let r = Result { try b.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: count) }; return b }
                box.results[c.rank] = r
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success, "all-reduce hung")
        return try box.results.map { try $0!.get() }
    }

    func rogue(_ endpoint: String, serverKey: String? = nil, plain: (user: String, password: String)? = nil, messages: Int = 200,
               seed: Int = 1) throws -> String {
        var args = ["zmq-rogue", "--connect", endpoint, "--socket", "push", "--messages", "\(messages)", "--seed", "\(seed)"]
        if let serverKey { args += ["--curve-server-key", serverKey] }
        if let plain { args += ["--plain-user", plain.user, "--plain-password", plain.password] }
        let peer = try PeerProcess(args)
        let line = try peer.readStandardOutputLine(timeout: 20)
        XCTAssertEqual(try peer.waitForExit(timeout: 20), 0, peer.standardErrorText())
        return line
    }

    /// With CURVE, a rogue that knows the server key but not a client key of the run is refused
    /// by the ZAP handler (logged with its address), one with no keys never gets through the
    /// handshake; the collectives are unaffected either way.
    func testCurveRefusesRoguesAndCollectivesStayExact() throws {
        guard ZMQ.has("curve") else { throw XCTSkip("libzmq built without CURVE (the HMAC fallback is not implemented)") }
        let keys = try RunKeys.generate(worldSize: 2)
        let logs = [LogLines(), LogLines()]
        let (comms, contexts) = try twoRanks(keys: keys, logs: logs)
        defer { for c in comms { c.close() }; for x in contexts { x.close() } }
        let expected = (0..<1000).map { Float(2 * $0 + 1000) }
        XCTAssertEqual(try allReduce(comms), [expected, expected])

        _ = try rogue(comms[0].endpoint, serverKey: keys.server!.publicKey, seed: 3)
        _ = try rogue(comms[1].endpoint, seed: 4)  // no keys at all
        XCTAssertEqual(try allReduce(comms), [expected, expected], "the rogues changed nothing")
        XCTAssertGreaterThanOrEqual(contexts[0].refusedConnections, 1)
        let refused = logs[0].all.joined(separator: "\n")
        XCTAssert(refused.contains("refused a CURVE connection from 127.0.0.1") && refused.contains("not one of this run's keys"), refused)
    }

    /// The fallback for a libzmq without CURVE (forced here): ranks present HMAC tokens derived
    /// from the run secret; a rogue with a made-up token, or with none, is refused.
    func testHMACFallbackAdmitsOnlyTheRunsTokens() throws {
        let keys = try RunKeys.generate(worldSize: 2, mechanism: .hmac)
        let logs = [LogLines(), LogLines()]
        let (comms, contexts) = try twoRanks(keys: keys, logs: logs)
        defer { for c in comms { c.close() }; for x in contexts { x.close() } }
        let expected = (0..<1000).map { Float(2 * $0 + 1000) }
        XCTAssertEqual(try allReduce(comms), [expected, expected])
        let forged = RunKeys.hmacToken(secret: String(repeating: "0", count: 64), rank: 1)
        _ = try rogue(comms[0].endpoint, plain: ("rank-1", forged), seed: 6)
        _ = try rogue(comms[0].endpoint, seed: 7)
        XCTAssertEqual(try allReduce(comms), [expected, expected], "the rogues changed nothing")
        let refused = logs[0].all.joined(separator: "\n")
        XCTAssert(refused.contains("refused a PLAIN connection from 127.0.0.1") && refused.contains("did not present this run's HMAC token"), refused)
    }

    /// SHA-256 and HMAC-SHA256 against FIPS 180-4 and RFC 4231 vectors.
    func testSHA256AndHMACVectors() {
        XCTAssertEqual(SHA256.hex(SHA256.hash(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(SHA256.hash([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex(SHA256.hmac(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8))),
                       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        XCTAssertEqual(SHA256.hex(SHA256.hmac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8))),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        XCTAssertEqual(SHA256.hex(SHA256.hmac(key: [UInt8](repeating: 0xaa, count: 131),
                                              message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        XCTAssertTrue(SHA256.constantTimeEqual([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(SHA256.constantTimeEqual([1, 2, 3], [1, 2, 4]))
        XCTAssertFalse(SHA256.constantTimeEqual([1, 2], [1, 2, 3]))
    }

    /// Without authentication, garbage reaches the inbox: the receiving rank throws a protocol
    /// violation naming the sender's address (no crash, no hang); oversized frames are dropped
    /// by libzmq before allocation (the receive then times out, naming the rank waited for).
    func testGarbageWithoutAuthIsRejectedNamingTheSender() throws {
        let logs = [LogLines(), LogLines()]
        let (comms, contexts) = try twoRanks(keys: nil, timeout: 1, maxFrameBytes: 1 << 20, logs: logs)
        defer { for c in comms { c.close() }; for x in contexts { x.close() } }
        _ = try rogue(comms[0].endpoint, messages: 50, seed: 5)
        var errors: [String] = []
        var buffer = [Float](repeating: 0, count: 4)
        for _ in 0..<60 {
            do {
                try buffer.withUnsafeMutableBufferPointer { try comms[0].receive($0.baseAddress!, count: 4, from: 1, tag: 9) }
                errors.append("accepted")
            } catch { errors.append("\(error)") }
            if errors.last!.contains("timed out") { break }
        }
        XCTAssertFalse(errors.contains("accepted"), "garbage was accepted as data")
        let violations = errors.filter { $0.contains("bad message") }
        XCTAssertFalse(violations.isEmpty, errors.joined(separator: "\n"))
        for v in violations {
            XCTAssert(v.contains("127.0.0.1 (unauthenticated)") || v.contains("from rank 0:") || v.contains("from rank 1:"), "sender not named: \(v)")
        }
        XCTAssert(errors.last!.contains("timed out"), "the 2 MiB frames never arrive: \(errors.last!)")
    }
}
