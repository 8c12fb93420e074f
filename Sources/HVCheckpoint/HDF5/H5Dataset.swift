import CHVHDF5
import Foundation

/// An HDF5 dataset: an n-dimensional array of one element type, read and written whole.
public final class H5Dataset: H5Object {
    /// The dataset's shape (empty for a scalar).
    public func shape(function: String = #function) throws -> [Int] {
        let id = try liveID(function)
        let space = try call("H5Dget_space", function: function) { H5Dget_space(id) }
        defer { H5Sclose(space) }
        let rank = try call("H5Sget_simple_extent_ndims", function: function) { H5Sget_simple_extent_ndims(space) }
        var dims = [hsize_t](repeating: 0, count: Int(rank))
        if rank > 0 {
            try call("H5Sget_simple_extent_dims", function: function) { H5Sget_simple_extent_dims(space, &dims, nil) }
        }
        return dims.map { Int($0) }
    }

    /// Number of elements.
    public func count(function: String = #function) throws -> Int {
        try shape(function: function).reduce(1, *)
    }

    /// The stored element type (nil for types hv does not map, e.g. compound or strings).
    public func elementType(function: String = #function) throws -> H5ElementType? {
        let id = try liveID(function)
        let type = try call("H5Dget_type", function: function) { H5Dget_type(id) }
        defer { H5Tclose(type) }
        return H5ElementType(hdf5Type: type)
    }

    /// Chunk shape, or nil for contiguous/compact storage.
    public func chunkShape(function: String = #function) throws -> [Int]? {
        try withCreatePlist(function) { dcpl in
            guard H5Pget_layout(dcpl) == H5D_CHUNKED else { return nil }
            var dims = [hsize_t](repeating: 0, count: 32)
            let rank = try call("H5Pget_chunk", function: function) { H5Pget_chunk(dcpl, Int32(dims.count), &dims) }
            return dims.prefix(Int(rank)).map { Int($0) }
        }
    }

    /// The filter pipeline (checksums, compression) in order.
    public func filters(function: String = #function) throws -> [H5Filter] {
        try withCreatePlist(function) { dcpl in
            let n = try call("H5Pget_nfilters", function: function) { H5Pget_nfilters(dcpl) }
            return try (0..<n).map { i in
                var flags: UInt32 = 0
                var nValues = 0
                var config: UInt32 = 0
                let filter = try call("H5Pget_filter2", function: function) {
                    H5Pget_filter2(dcpl, UInt32(i), &flags, &nValues, nil, 0, nil, &config)
                }
                switch filter {
                case H5Z_filter_t(hv_H5Z_FILTER_FLETCHER32()): return .fletcher32
                case H5Z_filter_t(hv_H5Z_FILTER_DEFLATE()): return .deflate
                default: return .other(filter)
                }
            }
        }
    }

    private func withCreatePlist<R>(_ function: String, _ body: (hid_t) throws -> R) throws -> R {
        let id = try liveID(function)
        let dcpl = try call("H5Dget_create_plist", function: function) { H5Dget_create_plist(id) }
        defer { H5Pclose(dcpl) }
        return try body(dcpl)
    }

    /// Writes the whole dataset from `values` (row-major); the count must match the shape.
    public func write<T: H5Element>(_ values: [T], function: String = #function) throws {
        try values.withUnsafeBufferPointer { try write(from: $0, function: function) }
    }

    /// Writes the whole dataset from a buffer of `T` (converted to the stored type by HDF5).
    public func write<T: H5Element>(from buffer: UnsafeBufferPointer<T>, function: String = #function) throws {
        let id = try liveID(function)
        let shape = try shape(function: function)
        guard buffer.count == shape.reduce(1, *) else {
            throw HDF5Error.shapeMismatch(object: path, file: filePath, shape: shape, count: buffer.count, function: function)
        }
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        let all = hv_H5S_ALL()
        try call("H5Dwrite", function: function) {
            H5Dwrite(id, T.h5ElementType.memoryType, all, all, H5P_DEFAULT_ID, base)
        }
    }

    /// Reads the whole dataset (row-major). The stored type must be `T`'s: no silent conversion.
    public func read<T: H5Element>(as: T.Type = T.self, function: String = #function) throws -> [T] {
        let count = try count(function: function)
        return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            try read(into: buffer, function: function)
            initialized = count
        }
    }

    /// Reads the whole dataset into `buffer`, whose count must equal the element count.
    public func read<T: H5Element>(into buffer: UnsafeMutableBufferPointer<T>, function: String = #function) throws {
        let id = try liveID(function)
        let stored = try elementType(function: function)
        guard stored == T.h5ElementType else {
            throw HDF5Error.typeMismatch(object: path, file: filePath, expected: T.h5ElementType.description,
                                         found: stored?.description ?? "an unsupported type", function: function)
        }
        let shape = try shape(function: function)
        guard buffer.count == shape.reduce(1, *) else {
            throw HDF5Error.shapeMismatch(object: path, file: filePath, shape: shape, count: buffer.count, function: function)
        }
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        let all = hv_H5S_ALL()
        try call("H5Dread", function: function) {
            H5Dread(id, T.h5ElementType.memoryType, all, all, H5P_DEFAULT_ID, base)
        }
    }

    /// Reads elements `range` of a 1-D dataset into `buffer` (count == range.count) through a
    /// hyperslab: only those bytes are read (for chunked datasets, the chunks they touch, whose
    /// filters such as Fletcher-32 are checked). The stored type must be `T`'s.
    public func read<T: H5Element>(range: Range<Int>, into buffer: UnsafeMutableBufferPointer<T>,
                                   function: String = #function) throws {
        let id = try liveID(function)
        let stored = try elementType(function: function)
        guard stored == T.h5ElementType else {
            throw HDF5Error.typeMismatch(object: path, file: filePath, expected: T.h5ElementType.description,
                                         found: stored?.description ?? "an unsupported type", function: function)
        }
        let shape = try shape(function: function)
        guard shape.count == 1, range.lowerBound >= 0, range.upperBound <= shape[0], buffer.count == range.count else {
            throw HDF5Error.invalidArgument("range \(range) (into \(buffer.count) elements) of a dataset of shape \(shape)",
                                            object: path, file: filePath, function: function)
        }
        guard let base = buffer.baseAddress, !range.isEmpty else { return }
        let fileSpace = try call("H5Dget_space", function: function) { H5Dget_space(id) }
        defer { H5Sclose(fileSpace) }
        var start = [hsize_t(range.lowerBound)], count = [hsize_t(range.count)]
        try call("H5Sselect_hyperslab", function: function) {
            H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, &start, nil, &count, nil)
        }
        let memSpace = try call("H5Screate_simple", function: function) { H5Screate_simple(1, &count, nil) }
        defer { H5Sclose(memSpace) }
        try call("H5Dread", function: function) {
            H5Dread(id, T.h5ElementType.memoryType, memSpace, fileSpace, H5P_DEFAULT_ID, base)
        }
    }

    /// Byte offset of a contiguous dataset's data in its file (nil for chunked/compact storage or
    /// before any data is written). For tests that corrupt a dataset on purpose.
    public func fileOffset(function: String = #function) throws -> Int? {
        let id = try liveID(function)
        let offset = H5Dget_offset(id)
        return offset == hv_HADDR_UNDEF() ? nil : Int(offset)
    }
}
