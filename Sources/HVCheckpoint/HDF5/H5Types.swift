import CHVHDF5

/// Element types hv stores in datasets. Files use little-endian types, as numpy/h5py do.
public enum H5ElementType: String, Sendable, Equatable, CustomStringConvertible {
    case float32, float64, int64, int32, uint16, uint8

    var memoryType: hid_t {
        switch self {
        case .float32: return hv_H5T_NATIVE_FLOAT()
        case .float64: return hv_H5T_NATIVE_DOUBLE()
        case .int64: return hv_H5T_NATIVE_INT64()
        case .int32: return hv_H5T_NATIVE_INT32()
        case .uint16: return hv_H5T_NATIVE_UINT16()
        case .uint8: return hv_H5T_NATIVE_UINT8()
        }
    }

    var fileType: hid_t {
        switch self {
        case .float32: return hv_H5T_IEEE_F32LE()
        case .float64: return hv_H5T_IEEE_F64LE()
        case .int64: return hv_H5T_STD_I64LE()
        case .int32: return hv_H5T_STD_I32LE()
        case .uint16: return hv_H5T_STD_U16LE()
        case .uint8: return hv_H5T_STD_U8LE()
        }
    }

    /// Classifies a stored HDF5 type (any byte order); nil for types hv does not map.
    init?(hdf5Type type: hid_t) {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_FLOAT:
            switch size {
            case 4: self = .float32
            case 8: self = .float64
            default: return nil
            }
        case H5T_INTEGER:
            let signed = H5Tget_sign(type) == H5T_SGN_2
            switch (size, signed) {
            case (8, true): self = .int64
            case (4, true): self = .int32
            case (2, false): self = .uint16
            case (1, false): self = .uint8
            default: return nil
            }
        default: return nil
        }
    }

    public var description: String { rawValue }
}

/// Swift element types that map onto an `H5ElementType`.
public protocol H5Element {
    static var h5ElementType: H5ElementType { get }
}

extension Float: H5Element { public static var h5ElementType: H5ElementType { .float32 } }
extension Double: H5Element { public static var h5ElementType: H5ElementType { .float64 } }
extension Int64: H5Element { public static var h5ElementType: H5ElementType { .int64 } }
extension Int32: H5Element { public static var h5ElementType: H5ElementType { .int32 } }
extension UInt16: H5Element { public static var h5ElementType: H5ElementType { .uint16 } }
extension UInt8: H5Element { public static var h5ElementType: H5ElementType { .uint8 } }

/// What a path inside a file names.
public enum H5ObjectKind: Sendable, Equatable {
    case group, dataset, other
}

/// Dataset creation options. Checksums and compression need chunked storage; when `chunks` is
/// nil and a filter is asked for, chunks of at most ~64 MiB are chosen.
public struct H5DatasetOptions: Sendable, Equatable {
    /// Chunk shape (same rank as the dataset), or nil for contiguous storage.
    public var chunks: [Int]?
    /// Store a Fletcher-32 checksum per chunk; reads of a corrupted chunk then fail.
    public var fletcher32: Bool
    /// gzip level 1-9, or nil for none.
    public var deflateLevel: Int?

    public init(chunks: [Int]? = nil, fletcher32: Bool = false, deflateLevel: Int? = nil) {
        self.chunks = chunks
        self.fletcher32 = fletcher32
        self.deflateLevel = deflateLevel
    }
}

/// A filter in a dataset's pipeline.
public enum H5Filter: Sendable, Equatable {
    case fletcher32
    case deflate
    case other(Int32)
}

/// An attribute value: the kinds hv writes and reads (h5py writes `str` as a variable-length
/// UTF-8 scalar, `int` as int64, `float` as float64, lists as 1-D arrays).
public enum H5AttributeValue: Sendable, Equatable, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByStringLiteral
{
    case int64(Int64)
    case double(Double)
    case string(String)
    case int64Array([Int64])
    case doubleArray([Double])

    public init(integerLiteral value: Int64) { self = .int64(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }

    var kindName: String {
        switch self {
        case .int64: return "int64"
        case .double: return "float64"
        case .string: return "string"
        case .int64Array: return "int64 array"
        case .doubleArray: return "float64 array"
        }
    }
}
