import CHVZeroMQ
import Foundation

/// The one error type of the ZeroMQ bridge. Every libzmq call goes through `zmqCall`, which
/// retries `EINTR` and turns a failure into one of these cases, carrying errno, libzmq's own
/// message (`zmq_strerror`) and the Swift function that made the call.
public enum ZMQError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `EAGAIN`: the socket's send/receive timeout (`ZMQ_SNDTIMEO` / `ZMQ_RCVTIMEO`) expired, or a
    /// `dontWait` call found nothing to do. Retry, or treat the peer as gone.
    case timedOut(operation: String, function: String)
    /// `ETERM`: the context is being or has been closed; close the socket and stop using it.
    case contextTerminated(operation: String, function: String)
    /// The hv socket or context object was already closed.
    case closed(operation: String, function: String)
    /// Any other libzmq failure.
    case failure(errno: Int32, message: String, operation: String, function: String)

    /// Builds the case for a libzmq errno value.
    public init(errno code: Int32, operation: String, function: String) {
        switch code {
        case EAGAIN: self = .timedOut(operation: operation, function: function)
        case hv_zmq_ETERM(): self = .contextTerminated(operation: operation, function: function)
        default:
            self = .failure(errno: code, message: String(cString: zmq_strerror(code)),
                            operation: operation, function: function)
        }
    }

    /// The errno value behind the error (nil for `.closed`).
    public var errno: Int32? {
        switch self {
        case .timedOut: return EAGAIN
        case .contextTerminated: return hv_zmq_ETERM()
        case .closed: return nil
        case .failure(let code, _, _, _): return code
        }
    }

    public var description: String {
        switch self {
        case .timedOut(let op, let fn):
            return "ZeroMQ: \(op) timed out (EAGAIN: send/receive timeout expired or nothing ready) in \(fn)"
        case .contextTerminated(let op, let fn):
            return "ZeroMQ: \(op) failed because the context was terminated (ETERM) in \(fn); close the socket"
        case .closed(let op, let fn):
            return "ZeroMQ: \(op) on a socket or context that is already closed, in \(fn)"
        case .failure(let code, let message, let op, let fn):
            return "ZeroMQ: \(op) failed: \(message) (errno \(code)) in \(fn)"
        }
    }
}

/// The error funnel: runs a libzmq call that returns -1 on failure, retrying on `EINTR`
/// (a signal interrupted a blocking call; the operation had no effect and is safe to repeat).
@discardableResult
@inline(__always)
func zmqCall(_ operation: @autoclosure () -> String, function: String, _ body: () -> Int32) throws(ZMQError) -> Int32 {
    while true {
        let rc = body()
        if rc != -1 { return rc }
        let code = hv_zmq_errno()
        if code == EINTR { continue }
        throw ZMQError(errno: code, operation: operation(), function: function)
    }
}

/// The funnel for libzmq calls that return a pointer (NULL on failure).
@inline(__always)
func zmqCall(_ operation: @autoclosure () -> String, function: String,
             _ body: () -> UnsafeMutableRawPointer?) throws(ZMQError) -> UnsafeMutableRawPointer {
    while true {
        if let pointer = body() { return pointer }
        let code = hv_zmq_errno()
        if code == EINTR { continue }
        throw ZMQError(errno: code, operation: operation(), function: function)
    }
}
