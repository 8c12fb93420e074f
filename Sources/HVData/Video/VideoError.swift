import CHVAV
import Foundation

/// The one error type of the FFmpeg bridge. Every libav* call goes through `avCall`, which turns
/// a negative return into `.ffmpeg` carrying the AVERROR code, FFmpeg's own message
/// (`av_strerror`), the file and the Swift function.
public enum VideoError: Error, Sendable, CustomStringConvertible {
    /// An FFmpeg call failed (e.g. "Invalid data found when processing input" for a truncated
    /// or non-video file).
    case ffmpeg(code: Int32, message: String, operation: String, path: String, function: String)
    /// The file has no video stream.
    case noVideoStream(path: String, function: String)
    /// The stream ended before any frame decoded (typically a truncated or corrupt file whose
    /// index still parsed).
    case noFrames(path: String, function: String)
    /// No decoder/encoder with that name or id in this FFmpeg build.
    case codecNotFound(name: String, path: String, function: String)
    /// A bad argument (odd size for yuv420p, wrong buffer size, ...).
    case invalidArgument(String, path: String, function: String)
    /// The reader or writer was already closed/finished.
    case closed(path: String, function: String)

    public var description: String {
        switch self {
        case .ffmpeg(let code, let message, let op, let path, let fn):
            return "video '\(path)': \(op) failed: \(message) (AVERROR \(code)) in \(fn)"
        case .noVideoStream(let path, let fn):
            return "video '\(path)': no video stream (in \(fn))"
        case .noFrames(let path, let fn):
            return "video '\(path)': no frame could be decoded; the file is truncated or corrupt (in \(fn))"
        case .codecNotFound(let name, let path, let fn):
            return "video '\(path)': codec '\(name)' is not available in this FFmpeg build (in \(fn))"
        case .invalidArgument(let why, let path, let fn):
            return "video '\(path)': \(why) (in \(fn))"
        case .closed(let path, let fn):
            return "video '\(path)': already closed (in \(fn))"
        }
    }
}

/// FFmpeg's text for an AVERROR code.
func avErrorString(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    if av_strerror(code, &buffer, buffer.count) < 0 { return "unknown FFmpeg error" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The error funnel for libav* calls returning a negative AVERROR on failure.
@discardableResult
func avCall(_ operation: @autoclosure () -> String, path: String, function: String,
            _ body: () -> Int32) throws(VideoError) -> Int32 {
    let rc = body()
    if rc >= 0 { return rc }
    throw .ffmpeg(code: rc, message: avErrorString(rc), operation: operation(), path: path, function: function)
}

/// The funnel for libav* allocations/lookups returning NULL on failure (out of memory).
func avAlloc<T>(_ operation: @autoclosure () -> String, path: String, function: String,
                _ body: () -> T?) throws(VideoError) -> T {
    if let value = body() { return value }
    let code = hv_AVERROR(ENOMEM)
    throw .ffmpeg(code: code, message: avErrorString(code), operation: operation(), path: path, function: function)
}

/// FFmpeg's global log level. hv makes FFmpeg quiet on first use (errors reach callers as
/// `VideoError`) unless a level was set here first.
public enum FFmpegLog {
    public enum Level: Int32, Sendable {
        case quiet = -8, panic = 0, fatal = 8, error = 16, warning = 24, info = 32, verbose = 40, debug = 48
    }

    /// Sets FFmpeg's log level (process-wide).
    public static func setLevel(_ level: Level) {
        logState.lock.withLock {
            logState.chosen = true
            av_log_set_level(level.rawValue)
        }
    }

    static func applyDefault() {
        logState.lock.withLock {
            guard !logState.chosen else { return }
            logState.chosen = true
            av_log_set_level(Level.quiet.rawValue)
        }
    }
}

private final class LogState: @unchecked Sendable {
    let lock = NSLock()
    var chosen = false
}

private let logState = LogState()
