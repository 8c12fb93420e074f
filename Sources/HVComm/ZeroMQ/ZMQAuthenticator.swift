import CHVZeroMQ
import Foundation

/// A ZAP handler (RFC 27): the REP socket at `inproc://zeromq.zap.01` that libzmq asks, for
/// every peer connecting to a server socket of the same context, whether to let it in.
///
/// CURVE alone only proves that a client knows the server's public key; this handler also
/// requires the client's own public key to be in the policy (Z85 key -> name, e.g. "rank-1"),
/// or, for the PLAIN-based HMAC fallback, the user's token. The name becomes the connection's "User-Id" property, so received frames can say
/// which authenticated peer sent them. Refusals are reported through `log` with the peer's
/// address — an unauthenticated peer is logged, never a crash.
///
/// Thread-safety: runs on its own thread, which alone touches the REP socket. Created and
/// stopped by `ZMQContext` (`startAuthenticator` / `close`), so it always stops before the
/// context terminates.
/// Who a ZAP handler admits: CURVE clients by public key, PLAIN clients by user name and
/// password (compared in constant time). The value is the connection's "User-Id".
public struct ZAPPolicy: Sendable {
    /// Z85 public key -> user id.
    public var curveClients: [String: String]
    /// User name (also the user id) -> expected password.
    public var plainPasswords: [String: [UInt8]]
    public init(curveClients: [String: String] = [:], plainPasswords: [String: [UInt8]] = [:]) {
        self.curveClients = curveClients; self.plainPasswords = plainPasswords
    }
}

final class ZMQAuthenticator: @unchecked Sendable {
    static let endpoint = "inproc://zeromq.zap.01"
    private let socket: ZMQSocket
    private let policy: ZAPPolicy
    private let log: @Sendable (String) -> Void
    private let lock = NSLock()
    private var stopping = false
    private let finished = DispatchSemaphore(value: 0)
    /// Refusals so far (for tests and summaries).
    private(set) var refusals = 0

    init(context: ZMQContext, policy: ZAPPolicy, log: @escaping @Sendable (String) -> Void) throws {
        self.policy = policy
        self.log = log
        socket = try context.makeSocket(.rep)
        try socket.setLinger(milliseconds: 0)
        try socket.setReceiveTimeout(milliseconds: 100)
        try socket.bind(Self.endpoint)
        Thread.detachNewThread { [self] in run() }
    }

    var refusalCount: Int { lock.withLock { refusals } }

    /// Ends the thread and waits until it has closed its socket.
    func stop() {
        lock.withLock { stopping = true }
        _ = finished.wait(timeout: .now() + 5)
    }

    private func run() {
        defer { socket.close(); finished.signal() }
        while !lock.withLock({ stopping }) {
            let request: [[UInt8]]
            do { request = try socket.receiveMultipart() } catch ZMQError.timedOut { continue } catch { return }
            let reply = decide(request)
            do { try socket.sendMultipart(reply) } catch ZMQError.contextTerminated { return } catch {}
        }
    }

    /// ZAP request: version, request id, domain, address, routing id, mechanism, credentials...
    /// Reply: version, request id, status code, status text, user id, metadata.
    private func decide(_ f: [[UInt8]]) -> [[UInt8]] {
        func text(_ b: [UInt8]) -> String { String(decoding: b.prefix(256), as: UTF8.self) }
        guard f.count >= 6, text(f[0]) == "1.0" else {
            return [Array("1.0".utf8), f.count > 1 ? f[1] : [], Array("500".utf8), Array("malformed ZAP request".utf8), [], []]
        }
        let id = f[1], address = text(f[3]), mechanism = text(f[5])
        func refuse(_ why: String) -> [[UInt8]] {
            lock.withLock { refusals += 1 }
            log("refused a \(mechanism) connection from \(address.isEmpty ? "an unknown address" : address): \(why)")
            return [Array("1.0".utf8), id, Array("400".utf8), Array(why.utf8), [], []]
        }
        let name: String
        switch mechanism {
        case "CURVE" where !policy.curveClients.isEmpty:
            guard f.count == 7, let key = ZMQ.z85(f[6]) else { return refuse("no CURVE public key in the request") }
            guard let n = policy.curveClients[key] else {
                return refuse("client key \(key.prefix(8))... is not one of this run's keys (a process not launched with the run?)")
            }
            name = n
        case "PLAIN" where !policy.plainPasswords.isEmpty:
            guard f.count == 8 else { return refuse("no user name and password in the request") }
            let user = text(f[6])
            guard let expected = policy.plainPasswords[user], SHA256.constantTimeEqual(expected, f[7]) else {
                return refuse("user \(user.prefix(32)) did not present this run's HMAC token (a process not launched with the run?)")
            }
            name = user
        default:
            return refuse("mechanism \(mechanism) is not allowed; this run requires its keys")
        }
        return [Array("1.0".utf8), id, Array("200".utf8), Array("OK".utf8), Array(name.utf8), []]
    }
}
