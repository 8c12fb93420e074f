import CHVZeroMQ
import Foundation

/// Library-level ZeroMQ queries: version, capabilities, CURVE keys and polling.
public enum ZMQ {
    /// The linked libzmq version.
    public static var version: (major: Int, minor: Int, patch: Int) {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }

    /// Whether libzmq was built with a capability: "curve", "ipc", "gssapi", "draft", ...
    public static func has(_ capability: String) -> Bool {
        zmq_has(capability) == 1
    }

    /// A new CURVE key pair (Z85-encoded, 40 characters each). Throws if CURVE is unavailable.
    public static func curveKeyPair(function: String = #function) throws -> ZMQCurveKeyPair {
        var publicKey = [CChar](repeating: 0, count: 41)
        var secretKey = [CChar](repeating: 0, count: 41)
        try zmqCall("zmq_curve_keypair", function: function) {
            zmq_curve_keypair(&publicKey, &secretKey)
        }
        func text(_ z85: [CChar]) -> String {
            String(decoding: z85.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return ZMQCurveKeyPair(publicKey: text(publicKey), secretKey: text(secretKey))
    }

    /// Z85 text of a 32-byte binary key (as ZAP delivers a CURVE client's public key).
    public static func z85(_ key: [UInt8]) -> String? {
        guard key.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard key.withUnsafeBufferPointer({ zmq_z85_encode(&out, $0.baseAddress, 32) }) != nil else { return nil }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Waits until one of `items` is ready or `timeoutMilliseconds` passes (-1: forever, 0: no wait).
    /// Returns the ready events for each item, in order (empty sets when it timed out).
    public static func poll(_ items: [(socket: ZMQSocket, events: ZMQPollEvents)], timeoutMilliseconds: Int,
                            function: String = #function) throws -> [ZMQPollEvents] {
        var raw = try items.map { item -> zmq_pollitem_t in
            zmq_pollitem_t(socket: try item.socket.rawHandle(function: function), fd: 0,
                           events: Int16(item.events.rawValue), revents: 0)
        }
        try zmqCall("zmq_poll", function: function) {
            zmq_poll(&raw, Int32(raw.count), timeoutMilliseconds)
        }
        return raw.map { ZMQPollEvents(rawValue: Int32($0.revents)) }
    }
}

/// A CURVE key pair in Z85 text.
public struct ZMQCurveKeyPair: Sendable, Equatable, Codable {
    public var publicKey: String
    public var secretKey: String
}

/// Events for `ZMQ.poll`.
public struct ZMQPollEvents: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let readable = ZMQPollEvents(rawValue: Int32(ZMQ_POLLIN))
    public static let writable = ZMQPollEvents(rawValue: Int32(ZMQ_POLLOUT))
}
