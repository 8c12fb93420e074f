import Foundation

/// SplitMix64: a small seeded generator for bootstrap resampling (reproducible fits).
public struct SplitMix64: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }
    public mutating func int(below n: Int) -> Int { Int(next() % UInt64(n)) }
    /// Standard normal (Box-Muller).
    public mutating func normal() -> Double {
        let u1 = max(uniform(), 1e-300), u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * cos(2 * .pi * u2)
    }
}

/// A value with its bootstrap percentile interval.
public struct Estimate: Codable, Sendable, Equatable {
    public var value: Double
    public var lo: Double
    public var hi: Double
    public init(value: Double, lo: Double, hi: Double) { self.value = value; self.lo = lo; self.hi = hi }
    public init(value: Double, samples: [Double], level: Double = 0.95) {
        self.value = value
        let s = samples.filter(\.isFinite).sorted()
        if s.isEmpty { lo = .nan; hi = .nan; return }
        lo = quantile(s, (1 - level) / 2)
        hi = quantile(s, 1 - (1 - level) / 2)
    }
    public func contains(_ x: Double) -> Bool { lo <= x && x <= hi }

    // NaN-safe JSON: non-finite values are written as null.
    enum CodingKeys: String, CodingKey { case value, lo, hi }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        value = try c.decodeIfPresent(Double.self, forKey: .value) ?? .nan
        lo = try c.decodeIfPresent(Double.self, forKey: .lo) ?? .nan
        hi = try c.decodeIfPresent(Double.self, forKey: .hi) ?? .nan
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        for (k, v) in [(CodingKeys.value, value), (.lo, lo), (.hi, hi)] {
            if v.isFinite { try c.encode(v, forKey: k) } else { try c.encodeNil(forKey: k) }
        }
    }
}

/// Linear-interpolated quantile of sorted values (numpy's default).
public func quantile(_ sorted: [Double], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let h = q * Double(sorted.count - 1)
    let i = Int(h.rounded(.down)), f = h - Double(i)
    return i + 1 < sorted.count ? sorted[i] + f * (sorted[i + 1] - sorted[i]) : sorted[i]
}

/// Ordinary least squares y = c0 + c1·x. Returns (c0, c1, r²); nil with fewer than 2 distinct x.
public func linearFit(_ x: [Double], _ y: [Double]) -> (intercept: Double, slope: Double, r2: Double)? {
    let n = Double(x.count)
    guard x.count >= 2 else { return nil }
    let mx = x.reduce(0, +) / n, my = y.reduce(0, +) / n
    var sxx = 0.0, sxy = 0.0, syy = 0.0
    for (a, b) in zip(x, y) { sxx += (a - mx) * (a - mx); sxy += (a - mx) * (b - my); syy += (b - my) * (b - my) }
    guard sxx > 1e-300 else { return nil }
    let slope = sxy / sxx
    return (my - slope * mx, slope, syy > 0 ? sxy * sxy / (sxx * syy) : 1)
}

/// Least-squares parabola y = c0 + c1·x + c2·x² (x centred internally). nil with fewer than 3 distinct x.
public func quadraticFit(_ x: [Double], _ y: [Double]) -> (c0: Double, c1: Double, c2: Double)? {
    guard Set(x).count >= 3 else { return nil }
    let n = Double(x.count)
    let m = x.reduce(0, +) / n
    var s = [Double](repeating: 0, count: 5), t = [Double](repeating: 0, count: 3)
    for (a, b) in zip(x, y) {
        let u = a - m
        var p = 1.0
        for k in 0..<5 { s[k] += p; if k < 3 { t[k] += p * b }; p *= u }
    }
    // Normal equations [s0 s1 s2; s1 s2 s3; s2 s3 s4] q = t, by Cramer's rule (3x3).
    func det(_ a: [[Double]]) -> Double {
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    }
    let A = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]]
    let D = det(A)
    guard abs(D) > 1e-300 else { return nil }
    var q = [0.0, 0.0, 0.0]
    for k in 0..<3 {
        var B = A
        for r in 0..<3 { B[r][k] = t[r] }
        q[k] = det(B) / D
    }
    // Back from u = x - m to x.
    return (q[0] - q[1] * m + q[2] * m * m, q[1] - 2 * q[2] * m, q[2])
}
