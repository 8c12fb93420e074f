import CHVZeroMQ
import Foundation

/// ZeroMQ socket types supported by hv.
public enum ZMQSocketType: Sendable, CustomStringConvertible {
    case pair, pub, sub, req, rep, dealer, router, pull, push

    var rawValue: Int32 {
        switch self {
        case .pair: return ZMQ_PAIR
        case .pub: return ZMQ_PUB
        case .sub: return ZMQ_SUB
        case .req: return ZMQ_REQ
        case .rep: return ZMQ_REP
        case .dealer: return ZMQ_DEALER
        case .router: return ZMQ_ROUTER
        case .pull: return ZMQ_PULL
        case .push: return ZMQ_PUSH
        }
    }

    public var description: String {
        switch self {
        case .pair: return "PAIR"
        case .pub: return "PUB"
        case .sub: return "SUB"
        case .req: return "REQ"
        case .rep: return "REP"
        case .dealer: return "DEALER"
        case .router: return "ROUTER"
        case .pull: return "PULL"
        case .push: return "PUSH"
        }
    }
}

/// Owns one libzmq socket.
///
/// Contract: a socket is used by one thread at a time (libzmq sockets are not thread-safe); it may
/// move between threads. `close()` is idempotent and never blocks (pending messages are sent by
/// the context's I/O thread for up to the linger period). `deinit` closes a socket that is still
/// open. Every socket starts with the context's finite `ZMQ_LINGER`.
public final class ZMQSocket: @unchecked Sendable {
    public let type: ZMQSocketType
    public let context: ZMQContext
    /// Set by `ZMQContext.attach`, cleared by `close()`.
    var handle: UnsafeMutableRawPointer?
    private let closeLock = NSLock()

    /// Creates a socket of `type` in `context` with linger `context.defaultLingerMilliseconds`.
    public init(context: ZMQContext, type: ZMQSocketType, function: String = #function) throws {
        self.context = context
        self.type = type
        try context.attach(self, function: function)
        try setLinger(milliseconds: context.defaultLingerMilliseconds)
    }

    deinit { close() }

    /// Whether `close()` has run (directly or through the context).
    public var isClosed: Bool { closeLock.withLock { handle == nil } }

    /// Closes the socket. Unsent messages are delivered in the background for up to the linger.
    public func close() {
        let h: UnsafeMutableRawPointer? = closeLock.withLock {
            defer { handle = nil }
            return handle
        }
        guard let h else { return }
        zmq_close(h)
        context.unregister(ObjectIdentifier(self))
    }

    func rawHandle(function: String, operation: @autoclosure () -> String = "use") throws(ZMQError) -> UnsafeMutableRawPointer {
        guard let handle else { throw .closed(operation: operation(), function: function) }
        return handle
    }

    // MARK: Endpoints

    /// Binds to an endpoint such as `tcp://127.0.0.1:*` (ephemeral port; see `lastEndpoint`),
    /// `tcp://*:5555`, `ipc:///tmp/x` or `inproc://name`.
    public func bind(_ endpoint: String, function: String = #function) throws {
        let h = try rawHandle(function: function)
        try zmqCall("zmq_bind(\(endpoint))", function: function) { zmq_bind(h, endpoint) }
    }

    /// Connects to an endpoint; for tcp the connection is made (and re-made) in the background.
    public func connect(_ endpoint: String, function: String = #function) throws {
        let h = try rawHandle(function: function)
        try zmqCall("zmq_connect(\(endpoint))", function: function) { zmq_connect(h, endpoint) }
    }

    public func unbind(_ endpoint: String, function: String = #function) throws {
        let h = try rawHandle(function: function)
        try zmqCall("zmq_unbind(\(endpoint))", function: function) { zmq_unbind(h, endpoint) }
    }

    public func disconnect(_ endpoint: String, function: String = #function) throws {
        let h = try rawHandle(function: function)
        try zmqCall("zmq_disconnect(\(endpoint))", function: function) { zmq_disconnect(h, endpoint) }
    }

    /// The endpoint last bound or connected, with the resolved port (`ZMQ_LAST_ENDPOINT`).
    public var lastEndpoint: String {
        get throws { String(decoding: try bytesOption(ZMQ_LAST_ENDPOINT).prefix { $0 != 0 }, as: UTF8.self) }
    }

    // MARK: Options

    /// Sets an `int` option (`ZMQ_*`).
    public func setIntOption(_ option: Int32, _ value: Int32, function: String = #function) throws {
        let h = try rawHandle(function: function)
        var v = value
        try zmqCall("zmq_setsockopt(\(option), \(value))", function: function) {
            zmq_setsockopt(h, option, &v, MemoryLayout<Int32>.size)
        }
    }

    /// Sets an `int64_t` option (e.g. `ZMQ_MAXMSGSIZE`).
    public func setInt64Option(_ option: Int32, _ value: Int64, function: String = #function) throws {
        let h = try rawHandle(function: function)
        var v = value
        try zmqCall("zmq_setsockopt(\(option), \(value))", function: function) {
            zmq_setsockopt(h, option, &v, MemoryLayout<Int64>.size)
        }
    }

    /// Sets a binary or string option (routing id, subscription, CURVE keys).
    public func setBytesOption(_ option: Int32, _ value: [UInt8], function: String = #function) throws {
        let h = try rawHandle(function: function)
        try zmqCall("zmq_setsockopt(\(option), \(value.count) bytes)", function: function) {
            value.withUnsafeBytes { zmq_setsockopt(h, option, $0.baseAddress, $0.count) }
        }
    }

    /// Reads an `int` option.
    public func intOption(_ option: Int32, function: String = #function) throws -> Int32 {
        let h = try rawHandle(function: function)
        var v: Int32 = 0
        var size = MemoryLayout<Int32>.size
        try zmqCall("zmq_getsockopt(\(option))", function: function) { zmq_getsockopt(h, option, &v, &size) }
        return v
    }

    /// Reads a binary or string option (at most 256 bytes).
    public func bytesOption(_ option: Int32, function: String = #function) throws -> [UInt8] {
        let h = try rawHandle(function: function)
        var buffer = [UInt8](repeating: 0, count: 256)
        var size = buffer.count
        try zmqCall("zmq_getsockopt(\(option))", function: function) { zmq_getsockopt(h, option, &buffer, &size) }
        return Array(buffer.prefix(size))
    }

    /// How long `close()`'s pending messages may keep the context alive. Must be finite.
    public func setLinger(milliseconds: Int) throws {
        precondition(milliseconds >= 0, "an infinite linger makes ZMQContext.close() hang")
        try setIntOption(ZMQ_LINGER, Int32(milliseconds))
    }

    /// The current linger in milliseconds.
    public var lingerMilliseconds: Int { get throws { Int(try intOption(ZMQ_LINGER)) } }

    /// The current send timeout in milliseconds (-1: none).
    public var sendTimeoutMilliseconds: Int { get throws { Int(try intOption(ZMQ_SNDTIMEO)) } }

    /// The current receive timeout in milliseconds (-1: none).
    public var receiveTimeoutMilliseconds: Int { get throws { Int(try intOption(ZMQ_RCVTIMEO)) } }

    /// Send timeout: a blocked send throws `ZMQError.timedOut` after this long (-1: block forever).
    public func setSendTimeout(milliseconds: Int) throws { try setIntOption(ZMQ_SNDTIMEO, Int32(milliseconds)) }

    /// Receive timeout: a blocked receive throws `ZMQError.timedOut` after this long (-1: forever).
    public func setReceiveTimeout(milliseconds: Int) throws { try setIntOption(ZMQ_RCVTIMEO, Int32(milliseconds)) }

    /// Outgoing queue limit in messages (0: unlimited); past it sends block or drop by type.
    public func setSendHighWaterMark(_ messages: Int) throws { try setIntOption(ZMQ_SNDHWM, Int32(messages)) }

    /// Incoming queue limit in messages (0: unlimited).
    public func setReceiveHighWaterMark(_ messages: Int) throws { try setIntOption(ZMQ_RCVHWM, Int32(messages)) }

    /// Identity a ROUTER peer sees for this socket (1-255 bytes, set before connect).
    public func setRoutingID(_ id: [UInt8]) throws { try setBytesOption(ZMQ_ROUTING_ID, id) }

    /// This socket's routing id.
    public var routingID: [UInt8] { get throws { try bytesOption(ZMQ_ROUTING_ID) } }

    /// ROUTER: fail with `EHOSTUNREACH` instead of silently dropping messages to unknown peers.
    public func setRouterMandatory(_ on: Bool) throws { try setIntOption(ZMQ_ROUTER_MANDATORY, on ? 1 : 0) }

    /// Queue messages only to completed connections (no queueing for peers not yet connected).
    public func setImmediate(_ on: Bool) throws { try setIntOption(ZMQ_IMMEDIATE, on ? 1 : 0) }

    /// SUB: receive messages starting with `prefix` (empty: everything).
    public func subscribe(_ prefix: [UInt8] = []) throws { try setBytesOption(ZMQ_SUBSCRIBE, prefix) }

    public func unsubscribe(_ prefix: [UInt8] = []) throws { try setBytesOption(ZMQ_UNSUBSCRIBE, prefix) }

    /// CURVE server role with its secret key (Z85). Requires `ZMQ.has("curve")`.
    public func setCurveServer(secretKey: String) throws {
        try setIntOption(ZMQ_CURVE_SERVER, 1)
        try setBytesOption(ZMQ_CURVE_SECRETKEY, Array(secretKey.utf8))
    }

    /// ZAP domain of a server socket (set before bind). With a domain set, libzmq asks the
    /// context's ZAP handler (`ZMQContext.startAuthenticator`) about every connecting peer.
    public func setZAPDomain(_ domain: String) throws { try setBytesOption(ZMQ_ZAP_DOMAIN, Array(domain.utf8)) }

    /// Largest frame accepted (`ZMQ_MAXMSGSIZE`); a peer that sends a bigger one is disconnected
    /// before the frame is allocated (-1: no limit).
    public func setMaxMessageSize(_ bytes: Int) throws { try setInt64Option(ZMQ_MAXMSGSIZE, Int64(bytes)) }

    /// CURVE client role: own key pair and the server's public key (all Z85).
    public func setCurveClient(keys: ZMQCurveKeyPair, serverPublicKey: String) throws {
        try setBytesOption(ZMQ_CURVE_PUBLICKEY, Array(keys.publicKey.utf8))
        try setBytesOption(ZMQ_CURVE_SECRETKEY, Array(keys.secretKey.utf8))
        try setBytesOption(ZMQ_CURVE_SERVERKEY, Array(serverPublicKey.utf8))
    }

    // MARK: Sending

    private static func flags(more: Bool, dontWait: Bool) -> Int32 {
        (more ? ZMQ_SNDMORE : 0) | (dontWait ? ZMQ_DONTWAIT : 0)
    }

    /// Sends one frame, copying `buffer` into a libzmq message. `more`: another frame follows.
    public func send(_ buffer: UnsafeRawBufferPointer, more: Bool = false, dontWait: Bool = false,
                     function: String = #function) throws {
        let h = try rawHandle(function: function)
        let flags = Self.flags(more: more, dontWait: dontWait)
        // zmq_send memcpy's from the pointer even for 0 bytes, so never pass NULL.
        let empty: UInt8 = 0
        _ = try withUnsafeBytes(of: empty) { placeholder in
            try zmqCall("zmq_send(\(buffer.count) bytes) on \(type)", function: function) {
                zmq_send(h, buffer.baseAddress ?? placeholder.baseAddress, buffer.count, flags)
            }
        }
    }

    /// Sends one frame of bytes.
    public func send(_ bytes: [UInt8], more: Bool = false, dontWait: Bool = false, function: String = #function) throws {
        try bytes.withUnsafeBytes { try send($0, more: more, dontWait: dontWait, function: function) }
    }

    /// Sends one frame of `Data`.
    public func send(_ data: Data, more: Bool = false, dontWait: Bool = false, function: String = #function) throws {
        try data.withUnsafeBytes { try send($0, more: more, dontWait: dontWait, function: function) }
    }

    /// Sends one frame of UTF-8 text.
    public func send(_ text: String, more: Bool = false, dontWait: Bool = false, function: String = #function) throws {
        try send(Array(text.utf8), more: more, dontWait: dontWait, function: function)
    }

    /// Sends `buffer` without copying it: libzmq reads it from its I/O thread and calls
    /// `release(buffer)` (on that thread) once done. The buffer must stay valid and unmodified
    /// until then; `release` is called exactly once, also when the send fails.
    public func sendNoCopy(_ buffer: UnsafeMutableRawBufferPointer, more: Bool = false, dontWait: Bool = false,
                           function: String = #function,
                           release: @escaping @Sendable (UnsafeMutableRawBufferPointer) -> Void) throws {
        let box = Unmanaged.passRetained(ReleaseBox(buffer: buffer, release: release)).toOpaque()
        let msg = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
        defer { msg.deallocate() }
        let rc = zmq_msg_init_data(msg, buffer.baseAddress, buffer.count, { _, hint in
            Unmanaged<ReleaseBox>.fromOpaque(hint!).takeRetainedValue().run()
        }, box)
        if rc != 0 {
            Unmanaged<ReleaseBox>.fromOpaque(box).takeRetainedValue().run()
            throw ZMQError(errno: hv_zmq_errno(), operation: "zmq_msg_init_data", function: function)
        }
        do {
            let h = try rawHandle(function: function)
            let flags = Self.flags(more: more, dontWait: dontWait)
            try zmqCall("zmq_msg_send(\(buffer.count) bytes, no copy) on \(type)", function: function) {
                zmq_msg_send(msg, h, flags)
            }
        } catch {
            zmq_msg_close(msg)  // runs release
            throw error
        }
    }

    /// Sends all frames as one multipart message (delivered atomically).
    public func sendMultipart(_ frames: [[UInt8]], dontWait: Bool = false, function: String = #function) throws {
        precondition(!frames.isEmpty, "a ZeroMQ message has at least one frame")
        for (i, frame) in frames.enumerated() {
            try send(frame, more: i + 1 < frames.count, dontWait: dontWait, function: function)
        }
    }

    /// Sends all frames as one multipart message (delivered atomically).
    public func sendMultipart(_ frames: [Data], dontWait: Bool = false, function: String = #function) throws {
        precondition(!frames.isEmpty, "a ZeroMQ message has at least one frame")
        for (i, frame) in frames.enumerated() {
            try send(frame, more: i + 1 < frames.count, dontWait: dontWait, function: function)
        }
    }

    // MARK: Receiving

    /// Receives one frame into a libzmq-owned message, without copying.
    public func receiveMessage(dontWait: Bool = false, function: String = #function) throws -> ZMQMessage {
        let h = try rawHandle(function: function)
        let message = ZMQMessage()
        try zmqCall("zmq_msg_recv on \(type)", function: function) {
            zmq_msg_recv(message.msg, h, dontWait ? ZMQ_DONTWAIT : 0)
        }
        return message
    }

    /// Receives one frame; `more` tells whether another frame of the same message follows.
    public func receiveFrame(dontWait: Bool = false, function: String = #function) throws -> (bytes: [UInt8], more: Bool) {
        let message = try receiveMessage(dontWait: dontWait, function: function)
        return (message.bytes, message.more)
    }

    /// Receives one frame as bytes (use `receiveMultipart` for multi-frame messages).
    public func receive(dontWait: Bool = false, function: String = #function) throws -> [UInt8] {
        try receiveMessage(dontWait: dontWait, function: function).bytes
    }

    /// Receives one whole multipart message (the timeout applies to its first frame; the rest
    /// has already arrived, since ZeroMQ delivers messages atomically).
    public func receiveMultipart(dontWait: Bool = false, function: String = #function) throws -> [[UInt8]] {
        try receiveMultipartMessages(dontWait: dontWait, function: function).map(\.bytes)
    }

    /// Receives one whole multipart message as `Data` frames.
    public func receiveMultipartData(dontWait: Bool = false, function: String = #function) throws -> [Data] {
        try receiveMultipartMessages(dontWait: dontWait, function: function).map(\.data)
    }

    /// Receives one whole multipart message as libzmq-owned frames (no copy).
    public func receiveMultipartMessages(dontWait: Bool = false, function: String = #function) throws -> [ZMQMessage] {
        var frames = [try receiveMessage(dontWait: dontWait, function: function)]
        while frames[frames.count - 1].more {
            frames.append(try receiveMessage(function: function))
        }
        return frames
    }
}

/// Keeps a no-copy send's release closure alive until libzmq calls back.
private final class ReleaseBox {
    let buffer: UnsafeMutableRawBufferPointer
    let release: @Sendable (UnsafeMutableRawBufferPointer) -> Void
    init(buffer: UnsafeMutableRawBufferPointer, release: @escaping @Sendable (UnsafeMutableRawBufferPointer) -> Void) {
        self.buffer = buffer
        self.release = release
    }
    func run() { release(buffer) }
}

/// One received frame owned by libzmq (a `zmq_msg_t`); closed in `deinit`.
public final class ZMQMessage: @unchecked Sendable {
    let msg: UnsafeMutablePointer<zmq_msg_t>

    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }

    deinit {
        zmq_msg_close(msg)
        msg.deallocate()
    }

    /// Frame size in bytes.
    public var count: Int { zmq_msg_size(msg) }

    /// Whether another frame of the same multipart message follows.
    public var more: Bool { zmq_msg_more(msg) == 1 }

    /// Borrows the frame's bytes (valid only inside `body`).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: count))
    }

    /// A copy of the frame's bytes.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// A copy of the frame's bytes as `Data`.
    public var data: Data { withUnsafeBytes { Data($0) } }

    /// A metadata property of the connection the frame came in on (`zmq_msg_gets`):
    /// "Peer-Address" (the sender's IP), "User-Id" (what the ZAP handler named the peer), ...
    public func property(_ name: String) -> String? {
        guard let p = zmq_msg_gets(msg, name) else { return nil }
        return String(cString: p)
    }

    /// "127.0.0.1 (authenticated as rank-1)" / "127.0.0.1 (unauthenticated)", for error messages.
    public var senderDescription: String {
        let address = property("Peer-Address") ?? "an unknown address"
        if let user = property("User-Id"), !user.isEmpty { return "\(address) (authenticated as \(user))" }
        return "\(address) (unauthenticated)"
    }
}
