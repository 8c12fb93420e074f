import CHVKernels

/// The checkpoint checksum (`hv_checksum64` in CHVKernels): 8-lane Fletcher-style 64-bit sums
/// over little-endian 32-bit words, mixed into 64 bits; vectorised, runs at memory speed.
/// HVCheckpoint stores it per block of each dataset (CHVKernels is imported here only).
public enum Checksum64 {
    public static let name = "hv-fletcher64x8"

    public static func of(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard let base = bytes.baseAddress else { return hv_checksum64(nil, 0) }
        return hv_checksum64(base, bytes.count)
    }

    public static func of<T>(_ values: UnsafeBufferPointer<T>) -> UInt64 { of(UnsafeRawBufferPointer(values)) }
}
