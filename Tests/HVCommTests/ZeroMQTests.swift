import Foundation
import HVComm
import XCTest

/// Smoke tests of the ZeroMQ bridge against the real libzmq: inproc between threads, tcp between
/// two real processes (the `hv-testpeer` executable), timeouts, and context shutdown.
final class ZeroMQTests: XCTestCase {

    // MARK: Between processes

    func testMultipartEchoWithRealPeerProcess() throws {
        let context = try ZMQContext(defaultLingerMilliseconds: 200)
        defer { context.close() }
        let socket = try context.makeSocket(.dealer)
        try socket.setReceiveTimeout(milliseconds: 10_000)
        try socket.setSendTimeout(milliseconds: 10_000)
        try socket.bind("tcp://127.0.0.1:*")
        let endpoint = try socket.lastEndpoint
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"), endpoint)
        XCTAssertFalse(endpoint.hasSuffix(":*"), endpoint)

        let peer = try PeerProcess(["zmq-echo", "--connect", endpoint, "--socket", "dealer", "--messages", "2"])
        defer { peer.terminateIfRunning() }

        let payload = Self.pseudoRandomBytes(count: 1 << 20, seed: 0x5EED)
        let message: [[UInt8]] = [Array("header".utf8), [], payload, [0, 1, 2, 255]]
        try socket.sendMultipart(message)
        XCTAssertEqual(try socket.receiveMultipart(), message)

        // Second message: the 1 MiB frame sent without copying; the release runs exactly once.
        let released = Counter()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: payload.count, alignment: 64)
        payload.withUnsafeBytes { buffer.copyMemory(from: $0) }
        try socket.send(Data("no-copy".utf8), more: true)
        try socket.sendNoCopy(buffer) { sent in
            sent.deallocate()
            released.increment()
        }
        let echoed = try socket.receiveMultipartData()
        XCTAssertEqual(echoed.count, 2)
        XCTAssertEqual(echoed.first, Data("no-copy".utf8))
        XCTAssertEqual(echoed.last.map { [UInt8]($0) }, payload)

        let status = try peer.waitForExit(timeout: 10)
        XCTAssertEqual(status, 0, "hv-testpeer failed: \(peer.standardErrorText())")
        socket.close()
        context.close()  // waits for libzmq to drop the no-copy message
        XCTAssertEqual(released.value, 1)
    }

    func testRouterPeerProcessBindsAndRepliesByRoutingID() throws {
        let peer = try PeerProcess(["zmq-echo", "--bind", "tcp://127.0.0.1:*", "--socket", "router", "--messages", "1"])
        defer { peer.terminateIfRunning() }
        let line = try peer.readStandardOutputLine(timeout: 10)
        XCTAssertTrue(line.hasPrefix("ENDPOINT tcp://127.0.0.1:"), "peer said '\(line)': \(peer.standardErrorText())")
        let endpoint = String(line.dropFirst("ENDPOINT ".count))

        let context = try ZMQContext(defaultLingerMilliseconds: 200)
        defer { context.close() }
        let socket = try context.makeSocket(.dealer)
        try socket.setRoutingID(Array("rank-3".utf8))
        XCTAssertEqual(try socket.routingID, Array("rank-3".utf8))
        try socket.setReceiveTimeout(milliseconds: 10_000)
        try socket.connect(endpoint)
        try socket.sendMultipart([Array("ping".utf8), Self.pseudoRandomBytes(count: 4096, seed: 7)])
        // The ROUTER saw [routing id, ping, bytes] and echoed all of it; the id routes the reply
        // back here and is stripped on the way, so the DEALER gets the original frames.
        let reply = try socket.receiveMultipart()
        XCTAssertEqual(reply, [Array("ping".utf8), Self.pseudoRandomBytes(count: 4096, seed: 7)])
        XCTAssertEqual(try peer.waitForExit(timeout: 10), 0, peer.standardErrorText())
    }

    // MARK: In one process

    func testInprocRoundTripBetweenThreads() throws {
        let context = try ZMQContext()
        defer { context.close() }
        let main = try context.makeSocket(.pair)
        try main.setReceiveTimeout(milliseconds: 5_000)
        try main.bind("inproc://hv-test-pair")

        let failure = Box<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            defer { done.signal() }
            do {
                let peer = try context.makeSocket(.pair)
                defer { peer.close() }
                try peer.setReceiveTimeout(milliseconds: 5_000)
                try peer.connect("inproc://hv-test-pair")
                for _ in 0..<3 {
                    let message = try peer.receiveMultipartMessages()
                    for (i, frame) in message.enumerated() {
                        try frame.withUnsafeBytes { try peer.send($0, more: i + 1 < message.count) }
                    }
                }
            } catch {
                failure.value = "\(error)"
            }
        }
        thread.start()

        for round in 0..<3 {
            let frames: [[UInt8]] = [[UInt8(round)], Self.pseudoRandomBytes(count: 1000 * (round + 1), seed: UInt64(round))]
            try main.sendMultipart(frames)
            let first = try main.receiveFrame()
            XCTAssertTrue(first.more)
            XCTAssertEqual(first.bytes, frames[0])
            let second = try main.receiveFrame()
            XCTAssertFalse(second.more)
            XCTAssertEqual(second.bytes, frames[1])
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertNil(failure.value)
    }

    func testReceiveTimeoutThrowsTimedOut() throws {
        let context = try ZMQContext()
        defer { context.close() }
        let socket = try context.makeSocket(.pull)
        try socket.bind("tcp://127.0.0.1:*")
        try socket.setReceiveTimeout(milliseconds: 100)
        XCTAssertEqual(try socket.receiveTimeoutMilliseconds, 100)
        XCTAssertEqual(try socket.lingerMilliseconds, context.defaultLingerMilliseconds)

        let start = Date()
        XCTAssertThrowsError(try socket.receiveMultipart()) { error in
            guard case ZMQError.timedOut = error else { return XCTFail("expected .timedOut, got \(error)") }
            XCTAssertTrue("\(error)".contains("timed out"))
        }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.09)
        XCTAssertLessThan(elapsed, 1.0)

        XCTAssertThrowsError(try socket.receive(dontWait: true)) { error in
            guard case ZMQError.timedOut = error else { return XCTFail("expected .timedOut, got \(error)") }
        }
    }

    func testContextCloseWithPendingUnsentMessagesDoesNotHang() throws {
        // A port nobody listens on: bind one, learn it, unbind.
        let context = try ZMQContext(defaultLingerMilliseconds: 300)
        let probe = try context.makeSocket(.pull)
        try probe.bind("tcp://127.0.0.1:*")
        let deadEndpoint = try probe.lastEndpoint
        probe.close()

        let push = try context.makeSocket(.push)
        try push.connect(deadEndpoint)
        for i in 0..<10 {
            try push.send([UInt8](repeating: UInt8(i), count: 1024), dontWait: true)  // queued, never delivered
        }
        // An inproc socket with an undelivered message and an explicit zero linger.
        let inprocPush = try context.makeSocket(.push)
        try inprocPush.setLinger(milliseconds: 0)
        try inprocPush.bind("inproc://nobody-pulls")

        let start = Date()
        let closed = DispatchSemaphore(value: 0)
        Thread {
            context.close()
            closed.signal()
        }.start()
        XCTAssertEqual(closed.wait(timeout: .now() + 5), .success, "ZMQContext.close() hung")
        XCTAssertLessThan(Date().timeIntervalSince(start), 2.0)
        XCTAssertTrue(context.isClosed)
        XCTAssertTrue(push.isClosed, "close() must close sockets that are still open")
        XCTAssertThrowsError(try push.send([1])) { error in
            guard case ZMQError.closed = error else { return XCTFail("expected .closed, got \(error)") }
        }
        XCTAssertThrowsError(try context.makeSocket(.pull)) { error in
            guard case ZMQError.closed = error else { return XCTFail("expected .closed, got \(error)") }
        }
        context.close()  // idempotent
    }

    func testRouterMandatoryReportsUnknownPeer() throws {
        let context = try ZMQContext()
        defer { context.close() }
        let router = try context.makeSocket(.router)
        try router.setRouterMandatory(true)
        try router.setSendHighWaterMark(16)
        try router.setReceiveHighWaterMark(16)
        try router.bind("inproc://router")
        XCTAssertThrowsError(try router.sendMultipart([Array("nobody".utf8), [1]])) { error in
            guard case ZMQError.failure(let code, let message, _, _) = error else { return XCTFail("got \(error)") }
            XCTAssertEqual(code, EHOSTUNREACH)
            XCTAssertFalse(message.isEmpty)
        }
        XCTAssertThrowsError(try router.bind("tcp://no-such-transport-syntax")) { error in
            XCTAssertNotNil((error as? ZMQError)?.errno)
            XCTAssertTrue("\(error)".contains("zmq_bind"), "\(error)")
        }
    }

    func testCurveKeysAndEncryptedRoundTrip() throws {
        XCTAssertGreaterThanOrEqual(ZMQ.version.major, 4)
        guard ZMQ.has("curve") else { throw XCTSkip("libzmq built without CURVE") }
        let server = try ZMQ.curveKeyPair()
        let client = try ZMQ.curveKeyPair()
        XCTAssertEqual(server.publicKey.utf8.count, 40)
        XCTAssertEqual(server.secretKey.utf8.count, 40)
        XCTAssertNotEqual(server, client)

        let context = try ZMQContext(defaultLingerMilliseconds: 0)
        defer { context.close() }
        let pull = try context.makeSocket(.pull)
        try pull.setCurveServer(secretKey: server.secretKey)
        try pull.setReceiveTimeout(milliseconds: 5_000)
        try pull.bind("tcp://127.0.0.1:*")
        let push = try context.makeSocket(.push)
        try push.setCurveClient(keys: client, serverPublicKey: server.publicKey)
        try push.connect(try pull.lastEndpoint)
        try push.send("secret")
        XCTAssertEqual(try pull.receive(), Array("secret".utf8))

        let ready = try ZMQ.poll([(pull, .readable), (push, .writable)], timeoutMilliseconds: 0)
        XCTAssertEqual(ready[0], [])
        XCTAssertTrue(ready[1].contains(.writable))
    }

    // MARK: Helpers

    static func pseudoRandomBytes(count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &+ 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}

final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
