import Foundation

/// Deterministic, splittable generator: xoshiro256** seeded through SplitMix64.
/// `split(_:)` derives an independent stream (per rank, per purpose: init, noise, data order)
/// from the seed alone, so the same (seed, stream) gives the same numbers on any machine.
/// `state` can be saved and restored for bit-exact resume.
public struct HVRandom: Sendable, Equatable {
    public private(set) var state: [UInt64]
    public let seed: UInt64
    /// Cached second Box-Muller value is deliberately not kept: every normal() draws two uniforms,
    /// so the stream position is a pure function of the number of calls.

    public init(seed: UInt64) {
        self.seed = seed
        var sm = seed
        state = (0..<4).map { _ in HVRandom.splitMix64(&sm) }
    }

    public init(seed: UInt64, state: [UInt64]) {
        precondition(state.count == 4 && state.contains { $0 != 0 }, "HVRandom state must be 4 words, not all zero")
        self.seed = seed
        self.state = state
    }

    /// An independent stream identified by `stream` (e.g. rank, or a purpose tag).
    public func split(_ stream: UInt64) -> HVRandom {
        var sm = seed ^ (stream &* 0x9E37_79B9_7F4A_7C15)
        _ = HVRandom.splitMix64(&sm)
        return HVRandom(seed: HVRandom.splitMix64(&sm) ^ stream)
    }

    public func split(_ name: String) -> HVRandom {
        // FNV-1a: stable across runs, unlike Hasher.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return split(h)
    }

    static func splitMix64(_ x: inout UInt64) -> UInt64 {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always) static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    public mutating func next() -> UInt64 {
        let result = HVRandom.rotl(state[1] &* 5, 7) &* 9
        let t = state[1] << 17
        state[2] ^= state[0]; state[3] ^= state[1]; state[1] ^= state[2]; state[0] ^= state[3]
        state[2] ^= t
        state[3] = HVRandom.rotl(state[3], 45)
        return result
    }

    /// Uniform in [0, 1) with 24 bits.
    public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Uniform in [0, 1) with 53 bits.
    public mutating func uniformDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

    /// Standard normal (Box-Muller, cosine branch only).
    public mutating func normal() -> Float {
        let u1 = max(uniformDouble(), 1e-300), u2 = uniformDouble()
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }

    /// Uniform integer in 0..<n.
    public mutating func int(below n: Int) -> Int {
        precondition(n > 0)
        return Int(next() % UInt64(n))
    }

    /// Fisher-Yates shuffle of 0..<n.
    public mutating func permutation(_ n: Int) -> [Int] {
        var a = Array(0..<n)
        if n < 2 { return a }
        for i in stride(from: n - 1, to: 0, by: -1) { a.swapAt(i, int(below: i + 1)) }
        return a
    }
}

extension Tensor {
    /// Normal(mean, std) values drawn from `rng` in row-major order.
    public static func randn(_ shape: [Int], mean: Float = 0, std: Float = 1, rng: inout HVRandom) -> Tensor {
        let t = Tensor(uninitialized: shape)
        for i in 0..<t.count { t.pointer[i] = mean + std * rng.normal() }
        return t
    }

    /// Uniform(low, high) values drawn from `rng`.
    public static func rand(_ shape: [Int], low: Float = 0, high: Float = 1, rng: inout HVRandom) -> Tensor {
        let t = Tensor(uninitialized: shape)
        for i in 0..<t.count { t.pointer[i] = low + (high - low) * rng.uniform() }
        return t
    }
}

/// Lets the standard library's random APIs (`Int.random(in:using:)`, `shuffled(using:)`) draw
/// from hv's seeded generator (fuzz inputs, rogue peers).
extension HVRandom: RandomNumberGenerator {}
