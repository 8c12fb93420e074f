import Foundation

/// The minimum of one IsoFLOP profile: loss vs ln N at a fixed budget, fitted by a parabola
/// (Chinchilla's method 2). D at the minimum comes from the budget's runs (ln D is linear in
/// ln N at fixed compute), interpolated at the vertex.
public struct IsoFLOPMinimum: Codable, Sendable, Equatable {
    public var budget: Double
    /// Geometric mean of the budget's actual run FLOPs (whole steps make them differ a little).
    public var flops: Double
    public var nOpt: Double
    public var dOpt: Double
    /// The parabola's value at its vertex.
    public var lossMin: Double
    /// loss = c0 + c1·ln N + c2·ln N² (for plots).
    public var c0: Double, c1: Double, c2: Double
    public var sizes: Int
    /// The smallest and largest size the parabola was fitted to.
    public var nLo: Double, nHi: Double
    /// The vertex lies outside the sizes trained at this budget (an extrapolation).
    public var outsideGrid: Bool
}

public enum IsoFLOPAnalysis {
    /// Vertices farther than this (in ln N) beyond the trained sizes are not used: ~half a decade.
    public static let maxExtrapolation = log(10.0) / 2

    /// The minimum of each budget's profile that has >= 3 distinct sizes and a convex parabola
    /// whose vertex is at most `maxExtrapolation` outside the sizes trained.
    public static func minima(_ rows: [ScalingResult], window: Int? = nil) -> [IsoFLOPMinimum] {
        Dictionary(grouping: rows, by: \.budget).keys.sorted().compactMap { b in minimum(rows.filter { $0.budget == b }, window: window) }
    }

    /// `window`: fit only the K sizes around the lowest loss (the best run and its neighbours in
    /// size), for profiles whose far ends are not parabolic (e.g. small models that saturate).
    public static func minimum(_ all: [ScalingResult], window: Int? = nil) -> IsoFLOPMinimum? {
        var group = all
        if let k = window, k >= 3 {
            let sizes = Set(all.map(\.params)).sorted()
            if sizes.count > k, let best = all.min(by: { $0.loss < $1.loss }), let i = sizes.firstIndex(of: best.params) {
                let lo = max(0, min(i - (k - 1) / 2, sizes.count - k))
                let keep = Set(sizes[lo..<(lo + k)])
                group = all.filter { keep.contains($0.params) }
            }
        }
        guard let first = group.first else { return nil }
        let x = group.map { log($0.params) }, y = group.map(\.loss)
        guard let q = quadraticFit(x, y), q.c2 > 0 else { return nil }
        let v = -q.c1 / (2 * q.c2)
        let lo = x.min()!, hi = x.max()!
        guard v >= lo - maxExtrapolation, v <= hi + maxExtrapolation else { return nil }
        guard let dl = linearFit(x, group.map { log($0.tokens) }) else { return nil }
        let flops = exp(group.map { log($0.flops) }.reduce(0, +) / Double(group.count))
        return IsoFLOPMinimum(budget: first.budget, flops: flops, nOpt: exp(v), dOpt: exp(dl.intercept + dl.slope * v),
                              lossMin: q.c0 + q.c1 * v + q.c2 * v * v, c0: q.c0, c1: q.c1, c2: q.c2,
                              sizes: Set(x).count, nLo: exp(lo), nHi: exp(hi), outsideGrid: v < lo || v > hi)
    }
}
