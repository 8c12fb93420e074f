import CHVHDF5
import Foundation

/// An HDF5 group: a directory of groups and datasets. Paths may be nested ("a/b/c") and
/// relative to this group, or absolute ("/a/b").
public class H5Group: H5Object {
    /// Creates group `path` and any missing intermediate groups; fails if it already exists.
    @discardableResult
    public func createGroup(_ path: String, function: String = #function) throws -> H5Group {
        let id = try liveID(function)
        let lcpl = try intermediateGroupsLinkPlist(function)
        defer { H5Pclose(lcpl) }
        let gid = try call("H5Gcreate2", object: childPath(path), function: function) {
            H5Gcreate2(id, path, lcpl, H5P_DEFAULT_ID, H5P_DEFAULT_ID)
        }
        return H5Group(id: gid, path: childPath(path), filePath: filePath, owner: fileObject)
    }

    /// Opens existing group `path`; throws `.notFound` if there is none.
    public func group(_ path: String, function: String = #function) throws -> H5Group {
        let id = try liveID(function)
        guard try kind(of: path, function: function) == .group else {
            throw HDF5Error.notFound(object: childPath(path) + " (group)", file: filePath, function: function)
        }
        let gid = try call("H5Gopen2", object: childPath(path), function: function) { H5Gopen2(id, path, H5P_DEFAULT_ID) }
        return H5Group(id: gid, path: childPath(path), filePath: filePath, owner: fileObject)
    }

    /// Opens group `path`, creating it (and intermediates) if missing, like h5py's `require_group`.
    public func requireGroup(_ path: String, function: String = #function) throws -> H5Group {
        try exists(path, function: function) ? group(path, function: function) : createGroup(path, function: function)
    }

    /// Whether a link `path` exists, checking each component (a missing parent is `false`, not an error).
    public func exists(_ path: String, function: String = #function) throws -> Bool {
        let id = try liveID(function)
        let components = path.split(separator: "/", omittingEmptySubsequences: true)
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in components {
            prefix += (prefix.isEmpty || prefix == "/") ? String(component) : "/" + component
            hv_h5_silence_errors()
            let rc = H5Lexists(id, prefix, H5P_DEFAULT_ID)
            if rc <= 0 {
                if rc < 0 { _ = takeHDF5ErrorStack() }  // e.g. a component is a dataset
                return false
            }
        }
        return true
    }

    /// What `path` names, or nil if nothing.
    public func kind(of path: String, function: String = #function) throws -> H5ObjectKind? {
        guard try exists(path, function: function) else { return nil }
        let oid = try call("H5Oopen", object: childPath(path), function: function) { H5Oopen(id, path, H5P_DEFAULT_ID) }
        defer { H5Oclose(oid) }
        switch H5Iget_type(oid) {
        case H5I_GROUP: return .group
        case H5I_DATASET: return .dataset
        default: return .other
        }
    }

    /// Names of this group's direct children, sorted by name.
    public func children(function: String = #function) throws -> [String] {
        let id = try liveID(function)
        var info = H5G_info_t()
        try call("H5Gget_info", function: function) { H5Gget_info(id, &info) }
        var names: [String] = []
        for i in 0..<info.nlinks {
            let n = try call("H5Lget_name_by_idx", function: function) {
                H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, H5P_DEFAULT_ID)
            }
            var buffer = [CChar](repeating: 0, count: Int(n) + 1)
            try call("H5Lget_name_by_idx", function: function) {
                H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buffer, buffer.count, H5P_DEFAULT_ID)
            }
            names.append(decodeCString(buffer))
        }
        return names
    }

    /// Unlinks `path` (its space is reclaimed only when the file is rewritten).
    public func delete(_ path: String, function: String = #function) throws {
        let id = try liveID(function)
        guard try exists(path, function: function) else {
            throw HDF5Error.notFound(object: childPath(path), file: filePath, function: function)
        }
        try call("H5Ldelete", object: childPath(path), function: function) { H5Ldelete(id, path, H5P_DEFAULT_ID) }
    }

    // MARK: Datasets

    /// Creates dataset `path` of `shape` (empty shape: a scalar), creating intermediate groups.
    public func createDataset(_ path: String, type: H5ElementType, shape: [Int],
                              options: H5DatasetOptions = H5DatasetOptions(),
                              function: String = #function) throws -> H5Dataset {
        let id = try liveID(function)
        let object = childPath(path)
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        let space: hid_t
        if shape.isEmpty {
            space = try call("H5Screate", object: object, function: function) { H5Screate(H5S_SCALAR) }
        } else {
            var dims = shape.map { hsize_t($0) }
            space = try call("H5Screate_simple", object: object, function: function) {
                H5Screate_simple(Int32(dims.count), &dims, nil)
            }
        }
        defer { H5Sclose(space) }

        let dcpl = try call("H5Pcreate(DATASET_CREATE)", object: object, function: function) {
            H5Pcreate(hv_H5P_DATASET_CREATE())
        }
        defer { H5Pclose(dcpl) }
        let filtered = options.fletcher32 || options.deflateLevel != nil
        if options.chunks != nil || filtered {
            guard !shape.isEmpty else {
                throw HDF5Error.invalidArgument("chunks and filters need a dataset of rank >= 1", object: object,
                                                file: filePath, function: function)
            }
            let chunks = options.chunks ?? Self.defaultChunks(shape: shape, elementSize: H5Tget_size(type.memoryType))
            guard chunks.count == shape.count, chunks.allSatisfy({ $0 > 0 }) else {
                throw HDF5Error.invalidArgument("chunk shape \(chunks) does not fit dataset shape \(shape)",
                                                object: object, file: filePath, function: function)
            }
            var chunkDims = chunks.map { hsize_t($0) }
            try call("H5Pset_chunk", object: object, function: function) {
                H5Pset_chunk(dcpl, Int32(chunkDims.count), &chunkDims)
            }
            if options.fletcher32 {
                try call("H5Pset_fletcher32", object: object, function: function) { hv_set_fletcher32(dcpl) }
            }
            if let level = options.deflateLevel {
                try call("H5Pset_deflate", object: object, function: function) { H5Pset_deflate(dcpl, UInt32(level)) }
            }
        }
        let lcpl = try intermediateGroupsLinkPlist(function)
        defer { H5Pclose(lcpl) }
        let did = try call("H5Dcreate2", object: object, function: function) {
            H5Dcreate2(id, path, type.fileType, space, lcpl, dcpl, H5P_DEFAULT_ID)
        }
        return H5Dataset(id: did, path: object, filePath: filePath, owner: fileObject)
    }

    /// Creates dataset `path` holding `values` (row-major) with `shape`.
    @discardableResult
    public func write<T: H5Element>(_ path: String, _ values: [T], shape: [Int],
                                    options: H5DatasetOptions = H5DatasetOptions(),
                                    function: String = #function) throws -> H5Dataset {
        let expected = shape.reduce(1, *)
        guard values.count == expected else {
            throw HDF5Error.shapeMismatch(object: childPath(path), file: filePath, shape: shape, count: values.count,
                                          function: function)
        }
        let dataset = try createDataset(path, type: T.h5ElementType, shape: shape, options: options, function: function)
        try dataset.write(values, function: function)
        return dataset
    }

    /// Opens existing dataset `path`; throws `.notFound` if there is none.
    public func dataset(_ path: String, function: String = #function) throws -> H5Dataset {
        let id = try liveID(function)
        guard try kind(of: path, function: function) == .dataset else {
            throw HDF5Error.notFound(object: childPath(path) + " (dataset)", file: filePath, function: function)
        }
        let did = try call("H5Dopen2", object: childPath(path), function: function) { H5Dopen2(id, path, H5P_DEFAULT_ID) }
        return H5Dataset(id: did, path: childPath(path), filePath: filePath, owner: fileObject)
    }

    /// Reads all of dataset `path` (row-major) as `T`; the stored type must be `T`'s.
    public func read<T: H5Element>(_ path: String, as: T.Type = T.self, function: String = #function) throws -> [T] {
        try dataset(path, function: function).read(as: T.self, function: function)
    }

    // MARK: Helpers

    var fileObject: H5File? { owner ?? (self as? H5File) }

    private func intermediateGroupsLinkPlist(_ function: String) throws(HDF5Error) -> hid_t {
        let lcpl = try call("H5Pcreate(LINK_CREATE)", function: function) { H5Pcreate(hv_H5P_LINK_CREATE()) }
        do {
            try call("H5Pset_create_intermediate_group", function: function) { H5Pset_create_intermediate_group(lcpl, 1) }
        } catch {
            H5Pclose(lcpl)
            throw error
        }
        return lcpl
    }

    /// The whole shape, with the largest dimension halved until a chunk is at most 64 MiB
    /// (HDF5 caps chunks at 4 GiB; smaller chunks also localise checksum failures).
    static func defaultChunks(shape: [Int], elementSize: Int) -> [Int] {
        var chunks = shape.map { max(1, $0) }
        while chunks.reduce(elementSize, *) > 64 << 20, let i = chunks.indices.max(by: { chunks[$0] < chunks[$1] }),
              chunks[i] > 1 {
            chunks[i] = (chunks[i] + 1) / 2
        }
        return chunks
    }
}
