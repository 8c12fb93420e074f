import CHVZeroMQ
import Foundation

/// Owns a libzmq context (its I/O threads) and tracks the sockets made from it.
///
/// `zmq_ctx_term` blocks until every socket of the context is closed and each has sent its
/// pending messages or run out of `ZMQ_LINGER`; libzmq's default linger is infinite, the classic
/// silent hang. hv avoids it twice: every socket gets a finite linger when it is created
/// (`defaultLingerMilliseconds`), and `close()` closes any socket still open before terminating.
///
/// Thread-safety: a context may be shared between threads (`makeSocket` and `close` lock).
/// Sockets hold a strong reference to their context, so a context is only deinitialised after
/// all of its sockets are gone; `deinit` then closes it.
public final class ZMQContext: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: UnsafeMutableRawPointer?
    private var sockets: [ObjectIdentifier: WeakSocket] = [:]
    private var authenticator: ZMQAuthenticator?
    /// Linger given to each new socket; `close()` waits at most about this long per socket.
    public let defaultLingerMilliseconds: Int

    private final class WeakSocket {
        weak var socket: ZMQSocket?
        init(_ socket: ZMQSocket) { self.socket = socket }
    }

    /// Creates a context with `ioThreads` background I/O threads (1 is plenty below ~1 GB/s).
    public init(ioThreads: Int = 1, defaultLingerMilliseconds: Int = 1000, function: String = #function) throws {
        precondition(defaultLingerMilliseconds >= 0, "an infinite linger makes close() hang")
        let ctx = try zmqCall("zmq_ctx_new", function: function) { zmq_ctx_new() }
        do {
            try zmqCall("zmq_ctx_set(ZMQ_IO_THREADS, \(ioThreads))", function: function) {
                zmq_ctx_set(ctx, ZMQ_IO_THREADS, Int32(ioThreads))
            }
        } catch {
            zmq_ctx_term(ctx)
            throw error
        }
        self.handle = ctx
        self.defaultLingerMilliseconds = defaultLingerMilliseconds
    }

    /// Whether `close()` has run.
    public var isClosed: Bool { lock.withLock { handle == nil } }

    /// Creates a socket of `type` with the context's default linger.
    public func makeSocket(_ type: ZMQSocketType, function: String = #function) throws -> ZMQSocket {
        try ZMQSocket(context: self, type: type, function: function)
    }

    /// Starts the context's ZAP handler (once; later calls keep the first): server sockets of
    /// this context with a ZAP domain then admit only the clients `policy` names (CURVE public
    /// keys or PLAIN user/password; the name becomes the connection's "User-Id"). Each refusal
    /// is reported through `log`, naming the peer's address. Start it before binding servers.
    public func startAuthenticator(policy: ZAPPolicy, log: @escaping @Sendable (String) -> Void) throws {
        if lock.withLock({ authenticator != nil }) { return }
        let a = try ZMQAuthenticator(context: self, policy: policy, log: log)
        lock.withLock { authenticator = a }
    }

    /// Connections the ZAP handler has refused so far.
    public var refusedConnections: Int { lock.withLock { authenticator }?.refusalCount ?? 0 }

    /// Closes every socket still open (their owners must not be using them concurrently), then
    /// terminates the context. Returns after at most about one linger period; idempotent.
    public func close() {
        // The ZAP thread closes its own socket first (closing it from here would race its recv).
        let auth: ZMQAuthenticator? = lock.withLock { defer { authenticator = nil }; return authenticator }
        auth?.stop()
        let (ctx, open): (UnsafeMutableRawPointer?, [ZMQSocket]) = lock.withLock {
            defer { handle = nil; sockets.removeAll() }
            return (handle, sockets.values.compactMap(\.socket))
        }
        guard let ctx else { return }
        // Blocking calls on other threads return ETERM from here on.
        zmq_ctx_shutdown(ctx)
        for socket in open { socket.close() }
        while zmq_ctx_term(ctx) == -1 && hv_zmq_errno() == EINTR {}
    }

    deinit { close() }

    // MARK: Socket bookkeeping (called by ZMQSocket)

    /// Creates the libzmq socket for `socket` and registers it in one critical section, so a
    /// concurrent `close()` either refuses the socket or sees it and closes it.
    func attach(_ socket: ZMQSocket, function: String) throws(ZMQError) {
        lock.lock()
        defer { lock.unlock() }
        guard let ctx = handle else { throw .closed(operation: "zmq_socket", function: function) }
        socket.handle = try zmqCall("zmq_socket(\(socket.type))", function: function) {
            zmq_socket(ctx, socket.type.rawValue)
        }
        sockets[ObjectIdentifier(socket)] = WeakSocket(socket)
    }

    func unregister(_ id: ObjectIdentifier) {
        lock.withLock { _ = sockets.removeValue(forKey: id) }
    }
}
