import Foundation

/// Control-plane messages between the coordinator and workers: one JSON object per ZeroMQ
/// message (DEALER on workers, ROUTER on the coordinator). Every field is validated on receipt.
public struct ControlMessage: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable { case hello, start, metrics, done, failed, abort, stop, saved, heartbeat, ping }
    public var type: Kind
    public var rank: Int?
    public var endpoint: String?
    public var host: String?
    public var pid: Int?
    public var peers: [String]?
    public var error: String?
    // metrics
    public var step: Int?
    public var loss: Double?
    public var lr: Double?
    public var grad_norm: Double?
    public var tokens_per_s: Double?
    public var step_s: Double?
    public var comm_s: Double?
    public var samples: Int?
    public var path: String?

    public init(type: Kind) { self.type = type }

    /// Largest control message accepted (bytes); larger ones are rejected unread.
    public static let maxBytes = 1 << 20

    public func encoded() -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return Array((try? enc.encode(self)) ?? Data())
    }

    /// Parses and validates one control message: size first (nothing larger than `maxBytes`
    /// is parsed), then JSON, then every field's range and each kind's required fields.
    public static func decode(_ bytes: [UInt8], worldSize: Int) throws -> ControlMessage {
        guard bytes.count <= maxBytes else { throw ControlError.malformed("control message of \(bytes.count) bytes (limit \(maxBytes))") }
        let m: ControlMessage
        do { m = try JSONDecoder().decode(ControlMessage.self, from: Data(bytes)) } catch {
            throw ControlError.malformed("not a control message: \(error)")
        }
        if let r = m.rank, r < 0 || r >= worldSize { throw ControlError.malformed("rank \(r) outside 0..<\(worldSize)") }
        // Strings and numbers a peer sends end up in logs, file paths and sockets: bound them.
        for (field, value, limit) in [("endpoint", m.endpoint, 512), ("host", m.host, 512), ("path", m.path, 4096), ("error", m.error, 65_536)] {
            if let v = value, v.utf8.count > limit { throw ControlError.malformed("\(field) of \(v.utf8.count) bytes (limit \(limit))") }
        }
        if let p = m.peers, p.count > worldSize || p.contains(where: { !isEndpoint($0) }) {
            throw ControlError.malformed("peers must be \(worldSize) tcp/ipc/inproc endpoints")
        }
        if let e = m.endpoint, !isEndpoint(e) { throw ControlError.malformed("endpoint \(e.prefix(80)) is not a tcp/ipc/inproc endpoint") }
        if let s = m.step, s < 0 { throw ControlError.malformed("negative step \(s)") }
        if let s = m.samples, s < 0 { throw ControlError.malformed("negative sample count \(s)") }
        if let p = m.pid, p < 0 { throw ControlError.malformed("negative pid \(p)") }
        switch m.type {
        case .hello: guard m.rank != nil, m.endpoint != nil else { throw ControlError.malformed("hello without rank/endpoint") }
        case .start: guard let p = m.peers, p.count == worldSize else { throw ControlError.malformed("start without \(worldSize) peers") }
        case .metrics, .done, .failed: guard m.rank != nil else { throw ControlError.malformed("\(m.type) without rank") }
        case .abort, .stop, .ping: break
        case .heartbeat: guard m.rank != nil else { throw ControlError.malformed("heartbeat without rank") }
        case .saved: guard m.rank != nil, m.step != nil else { throw ControlError.malformed("saved without rank/step") }
        }
        return m
    }
}

/// `tcp://host:port`, `ipc://path` or `inproc://name`, at most 512 bytes, printable ASCII.
/// One tcp/ipc/inproc endpoint, or a comma-separated list of up to 4 (a worker's inbox: TCP,
/// then its same-host Unix socket).
func isEndpoint(_ s: String) -> Bool {
    guard s.utf8.count <= 512, s.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return false }
    let parts = s.split(separator: ",", omittingEmptySubsequences: false)
    return parts.count <= 4 && parts.allSatisfy { $0.hasPrefix("tcp://") || $0.hasPrefix("ipc://") || $0.hasPrefix("inproc://") }
}

public enum ControlError: Error, CustomStringConvertible {
    case malformed(String)
    public var description: String { switch self { case .malformed(let m): "control plane: \(m)" } }
}

/// The local address a process would use to reach `host` (UDP connect + getsockname; no packet
/// is sent). This is what a worker advertises to its peers.
public func localAddress(reaching host: String) -> String? {
    var hints = addrinfo()
    hints.ai_family = AF_INET
    hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
    var res: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, "9", &hints, &res) == 0, let ai = res else { return nil }
    defer { freeaddrinfo(res) }
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    guard connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else { return nil }
    var addr = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    guard ok == 0 else { return nil }
    var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
    var a = addr.sin_addr
    guard inet_ntop(AF_INET, &a, &buf, socklen_t(INET_ADDRSTRLEN)) != nil else { return nil }
    return String(cString: buf)
}
