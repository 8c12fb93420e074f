import CHVZeroMQ
import Foundation

/// The CurveZMQ keys of one run, made by the coordinator for each launch (never reused across
/// runs or restarts) and handed to workers in a 0600 file in the run directory (see README,
/// "Authentication"): a file, not an argument (arguments are visible to every user in `ps`) and
/// not an environment variable (the ssh and template launchers would have to put it on a
/// command line, where `ps` shows it again).
///
/// One server key pair is shared by every server socket of the run (the coordinator's control
/// ROUTER and each worker's data-plane PULL inbox); each rank has its own client key pair, used
/// by its control/heartbeat DEALERs and its PUSH outboxes. Servers admit only the ranks' public
/// keys (ZAP), and report the sender of every frame as "rank-N".
public struct RunKeys: Codable, Sendable, Equatable {
    public var server: ZMQCurveKeyPair
    /// Client key pair of rank r at index r.
    public var ranks: [ZMQCurveKeyPair]

    public static func generate(worldSize: Int) throws -> RunKeys {
        guard ZMQ.has("curve") else { throw AuthError.curveUnavailable }
        return RunKeys(server: try ZMQ.curveKeyPair(), ranks: try (0..<worldSize).map { _ in try ZMQ.curveKeyPair() })
    }

    /// Z85 public key -> "rank-N": the allow-list of the ZAP handler.
    public var allowedClients: [String: String] {
        Dictionary(uniqueKeysWithValues: ranks.enumerated().map { ($0.element.publicKey, "rank-\($0.offset)") })
    }

    /// The socket configuration of one process: `rank` nil for the coordinator (server only).
    public func auth(rank: Int?) -> ZMQAuth {
        ZMQAuth(server: server, client: rank.map { ranks[$0] }, allowedClients: allowedClients)
    }

    /// Writes the keys to a new file readable by its owner only (created 0600, never widened).
    public func write(to path: String) throws {
        let data = try JSONEncoder().encode(self)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AuthError.keyFile(path: path, detail: "cannot create: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let n = data.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        guard n == data.count else { throw AuthError.keyFile(path: path, detail: "write failed: \(String(cString: strerror(errno)))") }
    }

    /// Reads a key file, refusing one that other users could read.
    public static func read(path: String, worldSize: Int) throws -> RunKeys {
        var st = stat()
        guard stat(path, &st) == 0 else { throw AuthError.keyFile(path: path, detail: "cannot read: \(String(cString: strerror(errno)))") }
        guard st.st_mode & 0o077 == 0 else {
            throw AuthError.keyFile(path: path, detail: "mode \(String(st.st_mode & 0o777, radix: 8)) lets other users read the run's keys; expected 600")
        }
        guard st.st_size <= 1 << 20, let data = FileManager.default.contents(atPath: path) else {
            throw AuthError.keyFile(path: path, detail: "unreadable or larger than 1 MiB")
        }
        let keys: RunKeys
        do { keys = try JSONDecoder().decode(RunKeys.self, from: data) } catch { throw AuthError.keyFile(path: path, detail: "not a key file: \(error)") }
        guard keys.ranks.count == worldSize else {
            throw AuthError.keyFile(path: path, detail: "keys for \(keys.ranks.count) ranks, this run has \(worldSize)")
        }
        for k in [keys.server] + keys.ranks where k.publicKey.utf8.count != 40 || k.secretKey.utf8.count != 40 {
            throw AuthError.keyFile(path: path, detail: "a key is not 40 characters of Z85")
        }
        return keys
    }
}

/// How one process sets up its sockets for an authenticated run.
public struct ZMQAuth: Sendable {
    public var server: ZMQCurveKeyPair
    /// This process's client keys (nil: the process only serves, like the coordinator).
    public var client: ZMQCurveKeyPair?
    public var allowedClients: [String: String]
    public static let zapDomain = "hv"

    public init(server: ZMQCurveKeyPair, client: ZMQCurveKeyPair?, allowedClients: [String: String]) {
        self.server = server; self.client = client; self.allowedClients = allowedClients
    }

    /// Makes `socket` a CURVE server checked by the context's ZAP handler (call before bind;
    /// starts the handler if the context has none yet, logging refusals with `log`).
    public func configureServer(_ socket: ZMQSocket, log: @escaping @Sendable (String) -> Void) throws {
        try socket.context.startAuthenticator(allowedClients: allowedClients, log: log)
        try socket.setBytesOption(ZMQ_CURVE_PUBLICKEY, Array(server.publicKey.utf8))
        try socket.setCurveServer(secretKey: server.secretKey)
        try socket.setZAPDomain(Self.zapDomain)
    }

    /// Makes `socket` a CURVE client with this process's keys (call before connect).
    public func configureClient(_ socket: ZMQSocket) throws {
        guard let client else { throw AuthError.noClientKeys }
        try socket.setCurveClient(keys: client, serverPublicKey: server.publicKey)
    }
}

public enum AuthError: Error, CustomStringConvertible {
    case curveUnavailable
    case keyFile(path: String, detail: String)
    case noClientKeys

    public var description: String {
        switch self {
        case .curveUnavailable:
            "this libzmq was built without CURVE (zmq_has(\"curve\") = 0), so the run's sockets cannot be authenticated; install a libzmq built with libsodium, or pass --insecure-no-auth on a network you trust"
        case .keyFile(let p, let d): "run key file \(p): \(d)"
        case .noClientKeys: "this process has no client keys for the run"
        }
    }
}
