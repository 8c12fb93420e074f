/// Data-plane frame header (28 bytes, little-endian), sent as the first frame of a two-frame
/// message whose second frame is the payload. Every field is checked on receipt before the
/// payload is touched: a peer can never make us read past a frame or allocate what it claims.
public struct WireHeader: Equatable, Sendable {
    public static let magic: UInt32 = 0x3157_5648  // "HVW1"
    public static let size = 28

    public enum Kind: UInt16, Sendable { case reduceScatter = 1, allGather, broadcast, pointToPoint, barrier }
    public enum DType: UInt16, Sendable {
        case float32 = 1, bfloat16 = 2
        public var bytes: Int { self == .float32 ? 4 : 2 }
    }

    public var source: UInt32
    public var kind: Kind
    public var dtype: DType
    /// Sequence number of the collective (or the tag of a point-to-point message).
    public var sequence: UInt64
    public var chunk: UInt32
    /// Elements in the payload.
    public var count: UInt32

    public init(source: Int, kind: Kind, dtype: DType, sequence: UInt64, chunk: Int, count: Int) {
        self.source = UInt32(source); self.kind = kind; self.dtype = dtype
        self.sequence = sequence; self.chunk = UInt32(chunk); self.count = UInt32(count)
    }

    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(WireHeader.size)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(WireHeader.magic); put(source); put(kind.rawValue); put(dtype.rawValue); put(sequence); put(chunk); put(count)
        return out
    }

    /// Parses and validates a header frame; nil with a reason when it is not one of ours.
    public static func parse(_ raw: UnsafeRawBufferPointer) -> Result<WireHeader, WireError> {
        guard raw.count == size else { return .failure(.malformed("header frame of \(raw.count) bytes, expected \(size)")) }
        func get<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T { T(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        guard get(0, UInt32.self) == magic else { return .failure(.malformed("bad magic (not an hv data-plane frame)")) }
        guard let kind = Kind(rawValue: get(8, UInt16.self)) else { return .failure(.malformed("unknown message kind \(get(8, UInt16.self))")) }
        guard let dtype = DType(rawValue: get(10, UInt16.self)) else { return .failure(.malformed("unknown dtype \(get(10, UInt16.self))")) }
        return .success(WireHeader(source: Int(get(4, UInt32.self)), kind: kind, dtype: dtype, sequence: get(12, UInt64.self),
                                   chunk: Int(get(20, UInt32.self)), count: Int(get(24, UInt32.self))))
    }
}

public enum WireError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    public var description: String { switch self { case .malformed(let m): "malformed data-plane message: \(m)" } }
}
