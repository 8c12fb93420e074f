/// bfloat16 storage type for the wire (hv computes in fp32): the top 16 bits of an IEEE float,
/// rounded to nearest-even on conversion.
public struct BFloat16: Sendable, Equatable {
    public var bits: UInt16
    public init(bits: UInt16) { self.bits = bits }

    public init(_ f: Float) {
        let u = f.bitPattern
        if f.isNaN { bits = UInt16(u >> 16) | 0x0040; return }  // keep NaN quiet
        let rounding = 0x7FFF + ((u >> 16) & 1)
        bits = UInt16((u &+ rounding) >> 16)
    }

    public var float: Float { Float(bitPattern: UInt32(bits) << 16) }
}

public enum BFloat16Conversion {
    public static func encode(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count: Int) {
        for i in 0..<count { dst[i] = BFloat16(src[i]).bits }
    }

    public static func decode(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src[i]) << 16) }
    }
}
