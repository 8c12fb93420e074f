import CHVZeroMQ
import Foundation

/// How a run's sockets authenticate peers.
public enum AuthMechanism: String, Codable, Sendable, CaseIterable {
    /// CurveZMQ: encrypted, each rank proves it holds its secret key.
    case curve
    /// Fallback for a libzmq without CURVE: each rank presents HMAC-SHA256(run secret, "rank-N")
    /// through ZeroMQ's PLAIN mechanism, checked by the ZAP handler. Authenticated, NOT
    /// encrypted: someone who can sniff the network can read the traffic and replay a token.
    case hmac

    /// CURVE when this libzmq has it, else the HMAC fallback.
    public static var best: AuthMechanism { ZMQ.has("curve") ? .curve : .hmac }

    public var summary: String {
        switch self {
        case .curve: "CurveZMQ authentication on (encrypted; only this run's keys are admitted)"
        case .hmac: "HMAC shared-secret authentication on (libzmq lacks CURVE: peers are authenticated, traffic is NOT encrypted)"
        }
    }
}

/// The secrets of one run, made by the coordinator for each launch (never reused across runs
/// or restarts) and handed to workers in a 0600 file in the run directory (see README,
/// "Authentication"): a file, not an argument (arguments are visible to every user in `ps`) and
/// not an environment variable (the ssh and template launchers would have to put it on a
/// command line, where `ps` shows it again).
///
/// CURVE: one server key pair is shared by every server socket of the run (the coordinator's
/// control ROUTER and each worker's data-plane PULL inbox); each rank has its own client key
/// pair, used by its control/heartbeat DEALERs and its PUSH outboxes. Servers admit only the
/// ranks' public keys (ZAP) and report the sender of every frame as "rank-N".
/// HMAC: one random 256-bit secret; rank N's token is HMAC-SHA256(secret, "hv-zap-v1|rank-N").
public struct RunKeys: Codable, Sendable, Equatable {
    public var mechanism: AuthMechanism
    public var worldSize: Int
    public var server: ZMQCurveKeyPair?
    /// Client key pair of rank r at index r (CURVE).
    public var ranks: [ZMQCurveKeyPair]?
    /// 32 random bytes, hex (HMAC).
    public var secret: String?

    public static func generate(worldSize: Int, mechanism: AuthMechanism = .best) throws -> RunKeys {
        switch mechanism {
        case .curve:
            guard ZMQ.has("curve") else { throw AuthError.curveUnavailable }
            return RunKeys(mechanism: .curve, worldSize: worldSize, server: try ZMQ.curveKeyPair(),
                           ranks: try (0..<worldSize).map { _ in try ZMQ.curveKeyPair() }, secret: nil)
        case .hmac:
            var rng = SystemRandomNumberGenerator()  // getrandom(2)
            let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
            return RunKeys(mechanism: .hmac, worldSize: worldSize, server: nil, ranks: nil, secret: SHA256.hex(bytes))
        }
    }

    /// The PLAIN password of `rank` under the HMAC mechanism.
    public static func hmacToken(secret: String, rank: Int) -> String {
        SHA256.hex(SHA256.hmac(key: Array(secret.utf8), message: Array("hv-zap-v1|rank-\(rank)".utf8)))
    }

    /// Who the ZAP handler admits.
    public var policy: ZAPPolicy {
        switch mechanism {
        case .curve:
            return ZAPPolicy(curveClients: Dictionary(uniqueKeysWithValues: (ranks ?? []).enumerated().map { ($0.element.publicKey, "rank-\($0.offset)") }))
        case .hmac:
            return ZAPPolicy(plainPasswords: Dictionary(uniqueKeysWithValues: (0..<worldSize).map {
                ("rank-\($0)", Array(Self.hmacToken(secret: secret ?? "", rank: $0).utf8))
            }))
        }
    }

    /// The socket configuration of one process: `rank` nil for the coordinator (server only).
    public func auth(rank: Int?) -> ZMQAuth { ZMQAuth(keys: self, rank: rank) }

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
        guard keys.worldSize == worldSize else {
            throw AuthError.keyFile(path: path, detail: "keys for \(keys.worldSize) ranks, this run has \(worldSize)")
        }
        switch keys.mechanism {
        case .curve:
            guard let server = keys.server, let ranks = keys.ranks, ranks.count == worldSize else {
                throw AuthError.keyFile(path: path, detail: "CURVE keys missing")
            }
            for k in [server] + ranks where k.publicKey.utf8.count != 40 || k.secretKey.utf8.count != 40 {
                throw AuthError.keyFile(path: path, detail: "a key is not 40 characters of Z85")
            }
        case .hmac:
            guard let s = keys.secret, s.utf8.count == 64 else { throw AuthError.keyFile(path: path, detail: "HMAC secret missing or not 32 bytes of hex") }
        }
        return keys
    }
}

/// How one process sets up its sockets for an authenticated run.
public struct ZMQAuth: Sendable {
    public let keys: RunKeys
    /// This process's rank (nil: the process only serves, like the coordinator).
    public let rank: Int?
    public static let zapDomain = "hv"

    public var mechanism: AuthMechanism { keys.mechanism }

    /// Makes `socket` a server checked by the context's ZAP handler (call before bind; starts
    /// the handler if the context has none yet, logging refusals with `log`).
    public func configureServer(_ socket: ZMQSocket, log: @escaping @Sendable (String) -> Void) throws {
        try socket.context.startAuthenticator(policy: keys.policy, log: log)
        switch keys.mechanism {
        case .curve:
            guard let server = keys.server else { throw AuthError.noClientKeys }
            try socket.setBytesOption(ZMQ_CURVE_PUBLICKEY, Array(server.publicKey.utf8))
            try socket.setCurveServer(secretKey: server.secretKey)
        case .hmac:
            try socket.setIntOption(ZMQ_PLAIN_SERVER, 1)
        }
        try socket.setZAPDomain(Self.zapDomain)
    }

    /// Makes `socket` a client with this process's credentials (call before connect).
    public func configureClient(_ socket: ZMQSocket) throws {
        guard let rank else { throw AuthError.noClientKeys }
        switch keys.mechanism {
        case .curve:
            guard let server = keys.server, let ranks = keys.ranks, rank < ranks.count else { throw AuthError.noClientKeys }
            try socket.setCurveClient(keys: ranks[rank], serverPublicKey: server.publicKey)
        case .hmac:
            guard let secret = keys.secret else { throw AuthError.noClientKeys }
            try socket.setBytesOption(ZMQ_PLAIN_USERNAME, Array("rank-\(rank)".utf8))
            try socket.setBytesOption(ZMQ_PLAIN_PASSWORD, Array(RunKeys.hmacToken(secret: secret, rank: rank).utf8))
        }
    }
}

public enum AuthError: Error, CustomStringConvertible {
    case curveUnavailable
    case keyFile(path: String, detail: String)
    case noClientKeys

    public var description: String {
        switch self {
        case .curveUnavailable:
            "this libzmq was built without CURVE (zmq_has(\"curve\") = 0), so the run's sockets cannot be authenticated; use --auth-mechanism hmac (authenticated, not encrypted), install a libzmq built with libsodium, or pass --insecure-no-auth on a network you trust"
        case .keyFile(let p, let d): "run key file \(p): \(d)"
        case .noClientKeys: "this process has no client keys for the run"
        }
    }
}
