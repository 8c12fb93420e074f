import CHVHDF5
import Foundation

/// An open HDF5 file; also its root group "/" (file attributes are the root group's, as in h5py).
///
/// `close()` flushes and closes the file and every object opened from it (close degree STRONG),
/// so the file is complete on disk when it returns (e.g. before an atomic rename). Objects
/// opened from a closed file throw `.closed`. `deinit` closes a file that is still open.
public final class H5File: H5Group {
    public enum Mode: Sendable {
        /// Create, truncating any existing file.
        case create
        /// Open an existing file read-only.
        case readOnly
        /// Open an existing file for reading and writing.
        case readWrite
    }

    public let mode: Mode
    let fileID: hid_t
    private(set) var isOpen: Bool

    /// Creates or opens the file at `path`. Errors name the file and carry HDF5's message.
    public init(path: String, mode: Mode, function: String = #function) throws {
        func check<T: BinaryInteger>(_ op: String, _ body: () -> T) throws(HDF5Error) -> T {
            try h5Call(op, file: path, object: "", function: function, body)
        }
        if mode != .create && !FileManager.default.fileExists(atPath: path) {
            throw HDF5Error.fileNotFound(file: path, function: function)
        }
        let fapl = try check("H5Pcreate(FILE_ACCESS)") { H5Pcreate(hv_H5P_FILE_ACCESS()) }
        defer { H5Pclose(fapl) }
        _ = try check("H5Pset_fclose_degree") { H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) }
        let fid: hid_t
        switch mode {
        case .create:
            fid = try check("create file") { H5Fcreate(path, hv_H5F_ACC_TRUNC(), H5P_DEFAULT_ID, fapl) }
        case .readOnly:
            fid = try check("open file read-only") { H5Fopen(path, hv_H5F_ACC_RDONLY(), fapl) }
        case .readWrite:
            fid = try check("open file read-write") { H5Fopen(path, hv_H5F_ACC_RDWR(), fapl) }
        }
        let root: hid_t
        do {
            root = try check("open root group") { H5Gopen2(fid, "/", H5P_DEFAULT_ID) }
        } catch {
            H5Fclose(fid)
            throw error
        }
        self.mode = mode
        self.fileID = fid
        self.isOpen = true
        super.init(id: root, path: "/", filePath: path, owner: nil)
    }

    deinit {
        if isOpen { H5Fclose(fileID) }
    }

    /// Whether `path` is an HDF5 file (false for missing or other files).
    public static func isHDF5(path: String) -> Bool {
        hv_h5_silence_errors()
        let rc = H5Fis_hdf5(path)
        if rc < 0 { _ = takeHDF5ErrorStack() }
        return rc > 0
    }

    /// Writes buffered data to disk.
    public func flush(function: String = #function) throws {
        let fid = try liveFileID(function)
        try call("H5Fflush", function: function) { H5Fflush(fid, H5F_SCOPE_GLOBAL) }
    }

    /// Flushes and closes the file and all objects opened from it. Idempotent.
    public func close(function: String = #function) throws {
        guard isOpen else { return }
        isOpen = false
        try call("H5Fclose", object: "", function: function) { H5Fclose(fileID) }
    }

    private func liveFileID(_ function: String) throws(HDF5Error) -> hid_t {
        guard isOpen else { throw .closed(file: filePath, function: function) }
        return fileID
    }
}
