import CHVHDF5
import Foundation

/// The one error type of the HDF5 bridge. Every HDF5 call goes through `h5Call`, which turns a
/// negative return into `.failure` carrying HDF5's own error stack (innermost call first), the
/// file, the object path and the Swift function. HDF5's automatic printing to stderr is off.
public enum HDF5Error: Error, Sendable, CustomStringConvertible {
    /// An HDF5 call failed; `message` is HDF5's error stack text.
    case failure(operation: String, file: String, object: String, message: String, function: String)
    /// The file to open does not exist.
    case fileNotFound(file: String, function: String)
    /// No group, dataset or attribute at `object`.
    case notFound(object: String, file: String, function: String)
    /// The stored element or attribute type is not the requested one.
    case typeMismatch(object: String, file: String, expected: String, found: String, function: String)
    /// The element count does not match the dataset's shape.
    case shapeMismatch(object: String, file: String, shape: [Int], count: Int, function: String)
    /// A bad argument (e.g. filters on a scalar dataset).
    case invalidArgument(String, object: String, file: String, function: String)
    /// The file was closed.
    case closed(file: String, function: String)

    public var description: String {
        switch self {
        case .failure(let op, let file, let object, let message, let fn):
            let target = object.isEmpty ? "file '\(file)'" : "'\(object)' in file '\(file)'"
            return "HDF5: \(op) failed for \(target) (in \(fn)):\n\(message)"
        case .fileNotFound(let file, let fn):
            return "HDF5: file '\(file)' does not exist (in \(fn))"
        case .notFound(let object, let file, let fn):
            return "HDF5: no object or attribute '\(object)' in file '\(file)' (in \(fn))"
        case .typeMismatch(let object, let file, let expected, let found, let fn):
            return "HDF5: '\(object)' in file '\(file)' holds \(found), not \(expected) (in \(fn))"
        case .shapeMismatch(let object, let file, let shape, let count, let fn):
            return "HDF5: '\(object)' in file '\(file)' has shape \(shape) but \(count) elements were given (in \(fn))"
        case .invalidArgument(let why, let object, let file, let fn):
            return "HDF5: \(why) for '\(object)' in file '\(file)' (in \(fn))"
        case .closed(let file, let fn):
            return "HDF5: file '\(file)' is closed (in \(fn))"
        }
    }
}

/// Takes (and clears) the calling thread's HDF5 error stack as text.
func takeHDF5ErrorStack() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = hv_h5_take_error_text(&buffer, buffer.count)
    let text = String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.isEmpty ? "(HDF5 error stack empty)" : text
}

/// The error funnel: runs an HDF5 call whose negative return (`herr_t`, `hid_t`, `htri_t`,
/// `ssize_t`) means failure. Automatic error printing is switched off first: the thread-safe
/// HDF5 build keeps that setting per thread.
@discardableResult
func h5Call<T: BinaryInteger>(_ operation: @autoclosure () -> String, file: String, object: String,
                              function: String, _ body: () -> T) throws(HDF5Error) -> T {
    hv_h5_silence_errors()
    let rc = body()
    if rc >= 0 { return rc }
    throw .failure(operation: operation(), file: file, object: object, message: takeHDF5ErrorStack(),
                   function: function)
}
