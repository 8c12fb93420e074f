import CHVHDF5
import Foundation

/// Base of the HDF5 handle classes: owns one HDF5 identifier (closed in `deinit`) and carries
/// the attribute API shared by files, groups and datasets.
///
/// Thread-safety: HDF5 is the thread-safe build (calls are serialised by a global lock), but hv
/// objects are not `Sendable`; use one object from one thread at a time.
public class H5Object {
    /// The HDF5 identifier; invalid once the file is closed (files close with degree STRONG).
    let id: hid_t
    /// Path of the object inside its file ("/" for the root group).
    public let path: String
    /// Path of the file on disk, for error messages.
    public let filePath: String
    /// Keeps the file open while a child object is alive (nil for the file itself).
    let owner: H5File?

    init(id: hid_t, path: String, filePath: String, owner: H5File?) {
        self.id = id
        self.path = path
        self.filePath = filePath
        self.owner = owner
    }

    deinit {
        // After H5File.close() the identifier is already invalid; otherwise drop our reference.
        if H5Iis_valid(id) > 0 { H5Idec_ref(id) }
    }

    var isFileOpen: Bool { (owner ?? (self as? H5File))?.isOpen ?? false }

    /// The identifier, or `.closed` once the file is closed.
    func liveID(_ function: String) throws(HDF5Error) -> hid_t {
        guard isFileOpen else { throw .closed(file: filePath, function: function) }
        return id
    }

    /// Path of a child `name` of this object (for messages and child objects).
    func childPath(_ name: String) -> String {
        if name.hasPrefix("/") { return name }
        return path == "/" ? "/" + name : path + "/" + name
    }

    /// The funnel bound to this object's file and path.
    @discardableResult
    func call<T: BinaryInteger>(_ operation: @autoclosure () -> String, object: String? = nil, function: String,
                                _ body: () -> T) throws(HDF5Error) -> T {
        try h5Call(operation(), file: filePath, object: object ?? path, function: function, body)
    }

    // MARK: Attributes

    /// Names of this object's attributes, in creation-independent name order.
    public func attributeNames(function: String = #function) throws -> [String] {
        let id = try liveID(function)
        let count = try call("H5Aiterate2 (count attributes)", function: function) { hv_h5_attribute_count(id) }
        var names: [String] = []
        for i in 0..<hsize_t(count) {
            let n = try call("H5Aget_name_by_idx", function: function) {
                H5Aget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, H5P_DEFAULT_ID)
            }
            var buffer = [CChar](repeating: 0, count: Int(n) + 1)
            try call("H5Aget_name_by_idx", function: function) {
                H5Aget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buffer, buffer.count, H5P_DEFAULT_ID)
            }
            names.append(decodeCString(buffer))
        }
        return names
    }

    /// Whether an attribute `name` exists on this object.
    public func hasAttribute(_ name: String, function: String = #function) throws -> Bool {
        let id = try liveID(function)
        return try call("H5Aexists(\(name))", function: function) { H5Aexists(id, name) } > 0
    }

    /// Removes attribute `name`.
    public func deleteAttribute(_ name: String, function: String = #function) throws {
        let id = try liveID(function)
        try call("H5Adelete(\(name))", function: function) { H5Adelete(id, name) }
    }

    /// Writes (or replaces) attribute `name`. Strings are stored as variable-length UTF-8.
    public func setAttribute(_ name: String, _ value: H5AttributeValue, function: String = #function) throws {
        switch value {
        case .int64(let v):
            try writeNumericAttribute(name, [v], scalar: true, type: .int64, function: function)
        case .double(let v):
            try writeNumericAttribute(name, [v], scalar: true, type: .float64, function: function)
        case .int64Array(let v):
            try writeNumericAttribute(name, v, scalar: false, type: .int64, function: function)
        case .doubleArray(let v):
            try writeNumericAttribute(name, v, scalar: false, type: .float64, function: function)
        case .string(let s):
            try writeStringAttribute(name, s, fixedLength: false, function: function)
        }
    }

    /// Writes (or replaces) a fixed-length, null-padded string attribute (numpy's `S` dtype).
    public func setFixedLengthStringAttribute(_ name: String, _ value: String, function: String = #function) throws {
        try writeStringAttribute(name, value, fixedLength: true, function: function)
    }

    /// Reads attribute `name`. Integers of any width read as `.int64`, floats as `.double`;
    /// scalars give scalar cases and 1-D (or empty) arrays the array cases. Strings may be
    /// variable- or fixed-length.
    public func attribute(_ name: String, function: String = #function) throws -> H5AttributeValue {
        let id = try liveID(function)
        let object = childPath(name)
        guard try hasAttribute(name, function: function) else {
            throw HDF5Error.notFound(object: object + " (attribute)", file: filePath, function: function)
        }
        let attr = try call("H5Aopen(\(name))", object: object, function: function) { H5Aopen(id, name, H5P_DEFAULT_ID) }
        defer { H5Aclose(attr) }
        let type = try call("H5Aget_type", object: object, function: function) { H5Aget_type(attr) }
        defer { H5Tclose(type) }
        let space = try call("H5Aget_space", object: object, function: function) { H5Aget_space(attr) }
        defer { H5Sclose(space) }
        let isNull = H5Sget_simple_extent_type(space) == H5S_NULL
        let isScalar = H5Sget_simple_extent_type(space) == H5S_SCALAR
        let count = isNull ? 0 : Int(try call("H5Sget_simple_extent_npoints", object: object, function: function) {
            H5Sget_simple_extent_npoints(space)
        })

        switch H5Tget_class(type) {
        case H5T_INTEGER:
            var values = [Int64](repeating: 0, count: count)
            if count > 0 {
                try call("H5Aread", object: object, function: function) { H5Aread(attr, hv_H5T_NATIVE_INT64(), &values) }
            }
            return isScalar ? .int64(values[0]) : .int64Array(values)
        case H5T_FLOAT:
            var values = [Double](repeating: 0, count: count)
            if count > 0 {
                try call("H5Aread", object: object, function: function) { H5Aread(attr, hv_H5T_NATIVE_DOUBLE(), &values) }
            }
            return isScalar ? .double(values[0]) : .doubleArray(values)
        case H5T_STRING where count == 1:
            return .string(try readStringAttribute(attr, type: type, object: object, function: function))
        default:
            throw HDF5Error.typeMismatch(object: object, file: filePath, expected: "int, float or string scalar/1-D",
                                         found: "HDF5 type class \(H5Tget_class(type).rawValue) with \(count) elements",
                                         function: function)
        }
    }

    public func int64Attribute(_ name: String, function: String = #function) throws -> Int64 {
        let value = try attribute(name, function: function)
        guard case .int64(let v) = value else { throw mismatch(name, "int64", value, function) }
        return v
    }

    public func doubleAttribute(_ name: String, function: String = #function) throws -> Double {
        let value = try attribute(name, function: function)
        guard case .double(let v) = value else { throw mismatch(name, "float64", value, function) }
        return v
    }

    public func stringAttribute(_ name: String, function: String = #function) throws -> String {
        let value = try attribute(name, function: function)
        guard case .string(let v) = value else { throw mismatch(name, "string", value, function) }
        return v
    }

    public func int64ArrayAttribute(_ name: String, function: String = #function) throws -> [Int64] {
        let value = try attribute(name, function: function)
        guard case .int64Array(let v) = value else { throw mismatch(name, "int64 array", value, function) }
        return v
    }

    public func doubleArrayAttribute(_ name: String, function: String = #function) throws -> [Double] {
        let value = try attribute(name, function: function)
        guard case .doubleArray(let v) = value else { throw mismatch(name, "float64 array", value, function) }
        return v
    }

    private func mismatch(_ name: String, _ expected: String, _ found: H5AttributeValue, _ function: String) -> HDF5Error {
        .typeMismatch(object: childPath(name), file: filePath, expected: expected, found: found.kindName, function: function)
    }

    /// Opens a fresh attribute for writing, replacing an existing one.
    private func createAttribute(_ name: String, type: hid_t, space: hid_t, function: String) throws -> hid_t {
        let id = try liveID(function)
        if try hasAttribute(name, function: function) { try deleteAttribute(name, function: function) }
        return try call("H5Acreate2(\(name))", object: childPath(name), function: function) {
            H5Acreate2(id, name, type, space, H5P_DEFAULT_ID, H5P_DEFAULT_ID)
        }
    }

    private func writeNumericAttribute<T: H5Element>(_ name: String, _ values: [T], scalar: Bool, type: H5ElementType,
                                                     function: String) throws {
        let object = childPath(name)
        let space: hid_t
        if scalar {
            space = try call("H5Screate", object: object, function: function) { H5Screate(H5S_SCALAR) }
        } else if values.isEmpty {
            // As h5py: an empty array is stored with a null dataspace.
            space = try call("H5Screate", object: object, function: function) { H5Screate(H5S_NULL) }
        } else {
            var dims = [hsize_t(values.count)]
            space = try call("H5Screate_simple", object: object, function: function) { H5Screate_simple(1, &dims, nil) }
        }
        defer { H5Sclose(space) }
        let attr = try createAttribute(name, type: type.fileType, space: space, function: function)
        defer { H5Aclose(attr) }
        if !values.isEmpty {
            _ = try values.withUnsafeBytes { raw in
                try call("H5Awrite", object: object, function: function) { H5Awrite(attr, type.memoryType, raw.baseAddress) }
            }
        }
    }

    private func writeStringAttribute(_ name: String, _ value: String, fixedLength: Bool, function: String) throws {
        let object = childPath(name)
        let type = try call("H5Tcopy", object: object, function: function) { H5Tcopy(hv_H5T_C_S1()) }
        defer { H5Tclose(type) }
        let utf8 = Array(value.utf8)
        let size = fixedLength ? max(1, utf8.count) : hv_H5T_VARIABLE()
        try call("H5Tset_size", object: object, function: function) { H5Tset_size(type, size) }
        try call("H5Tset_cset", object: object, function: function) { H5Tset_cset(type, H5T_CSET_UTF8) }
        try call("H5Tset_strpad", object: object, function: function) {
            H5Tset_strpad(type, fixedLength ? H5T_STR_NULLPAD : H5T_STR_NULLTERM)
        }
        let space = try call("H5Screate", object: object, function: function) { H5Screate(H5S_SCALAR) }
        defer { H5Sclose(space) }
        let attr = try createAttribute(name, type: type, space: space, function: function)
        defer { H5Aclose(attr) }
        if fixedLength {
            let padded = utf8.isEmpty ? [0] : utf8
            _ = try padded.withUnsafeBytes { raw in
                try call("H5Awrite", object: object, function: function) { H5Awrite(attr, type, raw.baseAddress) }
            }
        } else {
            // A variable-length string is written as a pointer to a NUL-terminated buffer.
            try value.withCString { cString in
                var pointer: UnsafePointer<CChar>? = cString
                try call("H5Awrite", object: object, function: function) { H5Awrite(attr, type, &pointer) }
            }
        }
    }

    private func readStringAttribute(_ attr: hid_t, type: hid_t, object: String, function: String) throws -> String {
        // Read in the file's own character set: HDF5 does not convert between ASCII and UTF-8.
        let memType = try call("H5Tcopy", object: object, function: function) { H5Tcopy(hv_H5T_C_S1()) }
        defer { H5Tclose(memType) }
        try call("H5Tset_cset", object: object, function: function) { H5Tset_cset(memType, H5Tget_cset(type)) }
        if try call("H5Tis_variable_str", object: object, function: function, { H5Tis_variable_str(type) }) > 0 {
            try call("H5Tset_size", object: object, function: function) { H5Tset_size(memType, hv_H5T_VARIABLE()) }
            var pointer: UnsafeMutablePointer<CChar>? = nil
            try call("H5Aread", object: object, function: function) { H5Aread(attr, memType, &pointer) }
            guard let pointer else { return "" }
            defer { H5free_memory(pointer) }
            return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
        }
        let size = H5Tget_size(type)
        try call("H5Tset_size", object: object, function: function) { H5Tset_size(memType, size) }
        try call("H5Tset_strpad", object: object, function: function) { H5Tset_strpad(memType, H5Tget_strpad(type)) }
        var buffer = [UInt8](repeating: 0, count: size + 1)
        try call("H5Aread", object: object, function: function) { H5Aread(attr, memType, &buffer) }
        var bytes = buffer.prefix(size).prefix { $0 != 0 }[...]
        if H5Tget_strpad(type) == H5T_STR_SPACEPAD {
            while bytes.last == UInt8(ascii: " ") { bytes = bytes.dropLast() }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// `H5P_DEFAULT` (and `H5S_ALL`, `H5E_DEFAULT`) as `hid_t`: the macro imports as Int32.
let H5P_DEFAULT_ID: hid_t = hv_H5P_DEFAULT()

func decodeCString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
