import Foundation

/// A power law y = a·x^b with bootstrap intervals on a and b.
public struct PowerLawEstimate: Codable, Sendable, Equatable {
    public var a: Estimate
    public var b: Estimate
    public var r2: Double
    /// (a, b) of every usable bootstrap resample (for intervals of predictions).
    public var samples: [[Double]]

    public var law: PowerLaw { PowerLaw(a: a.value, b: b.value, r2: r2) }

    /// y at x with the bootstrap interval of the prediction.
    public func predict(_ x: Double, level: Double = 0.95) -> Estimate {
        Estimate(value: law(x), samples: samples.map { $0[0] * pow(x, $0[1]) }, level: level)
    }
}

/// The parametric fit with intervals.
public struct ParametricEstimate: Codable, Sendable, Equatable {
    public var E: Estimate, A: Estimate, B: Estimate, alpha: Estimate, beta: Estimate
    /// beta / (alpha + beta): the N_opt exponent it implies when C ∝ N·D.
    public var nOptExponent: Estimate
    public var huberDelta: Double
    public var objective: Double
    public var starts: Int
    public var converged: Bool
    /// (E, A, B, alpha, beta) of every usable bootstrap resample.
    public var samples: [[Double]]

    public var law: ParametricLaw { ParametricLaw(E: E.value, A: A.value, B: B.value, alpha: alpha.value, beta: beta.value) }
}

/// The lowest final loss of one budget: a point of the loss-compute envelope.
public struct EnvelopePoint: Codable, Sendable, Equatable {
    public var budget: Double
    public var flops: Double
    public var loss: Double
    public var run: String
    public var params: Double
}

/// fit.json: everything `hv-scaling fit` found, and what `recommend` reads.
public struct ScalingFitResult: Codable, Sendable {
    public var version = 1
    public var source: String
    public var runs: Int
    public var budgets: [Double]
    public var level: Double
    public var bootstrap: Int
    public var seed: UInt64
    /// (a) the lower envelope of loss vs compute and L(C) = a·C^b (C in FLOPs).
    public var envelope: [EnvelopePoint]
    public var lossVsCompute: PowerLawEstimate?
    /// (b) IsoFLOP minima and N_opt(C) = a1·C^b1, D_opt(C) = a2·C^b2 (N in parameters, D in tokens, C in FLOPs).
    public var isoflop: [IsoFLOPMinimum]
    public var nOpt: PowerLawEstimate?
    public var dOpt: PowerLawEstimate?
    /// (c) L(N, D) = E + A/N^alpha + B/D^beta.
    public var parametric: ParametricEstimate?
    /// Median FLOPs / (params x tokens) of the runs (6 for the plain 6·N·D rule; more with attention).
    public var flopsPerParamToken: Double
    /// Sizes per IsoFLOP parabola (nil: all).
    public var profileWindow: Int?
    /// Path of the family file (from DIR/sweep.json), for `recommend`.
    public var family: String?
    public var notes: [String]
}

public struct FitOptions: Sendable {
    public var bootstrap = 1000
    /// Resamples for the parametric fit (each is an L-BFGS fit from a few starts).
    public var parametricBootstrap = 200
    public var seed: UInt64 = 0
    public var level = 0.95
    public var huberDelta = 1e-3
    /// nil: Chinchilla's grid of 4,500 starts.
    public var parametricStarts: [[Double]]? = nil
    /// Fit each IsoFLOP parabola to the K sizes around the budget's best run only (nil: all sizes).
    public var profileWindow: Int? = nil
    public init() {}
}

public enum ScalingAnalysis {
    /// Runs grouped by budget, in budget order.
    public static func groups(_ rows: [ScalingResult]) -> [[ScalingResult]] {
        Set(rows.map(\.budget)).sorted().map { b in rows.filter { $0.budget == b } }
    }

    public static func envelope(_ groups: [[ScalingResult]]) -> [EnvelopePoint] {
        groups.compactMap { g in
            g.min { $0.loss < $1.loss }.map { EnvelopePoint(budget: $0.budget, flops: $0.flops, loss: $0.loss, run: $0.run, params: $0.params) }
        }
    }

    static func lossFit(_ groups: [[ScalingResult]]) -> PowerLaw? {
        let env = envelope(groups)
        guard Set(env.map(\.budget)).count >= 2 else { return nil }
        return PowerLaw.fit(x: env.map(\.flops), y: env.map(\.loss))
    }

    static func optimaFits(_ groups: [[ScalingResult]], window: Int?) -> (PowerLaw, PowerLaw)? {
        let m = groups.compactMap { IsoFLOPAnalysis.minimum($0, window: window) }
        guard Set(m.map(\.budget)).count >= 2, let n = PowerLaw.fit(x: m.map(\.flops), y: m.map(\.nOpt)),
              let d = PowerLaw.fit(x: m.map(\.flops), y: m.map(\.dOpt)) else { return nil }
        return (n, d)
    }

    /// One hierarchical resample: budgets drawn with replacement, then each drawn budget's runs
    /// drawn with replacement. Noise within a profile moves its minimum; the draw of budgets
    /// carries the scatter of the minima around the power law (a budget drawn twice counts twice).
    static func resample(_ groups: [[ScalingResult]], _ rng: inout SplitMix64) -> [[ScalingResult]] {
        (0..<groups.count).map { _ in
            let g = groups[rng.int(below: groups.count)]
            return (0..<g.count).map { _ in g[rng.int(below: g.count)] }
        }
    }

    public static func fit(_ rows: [ScalingResult], source: String, options o: FitOptions = FitOptions(), family: String? = nil) throws -> ScalingFitResult {
        guard rows.count >= 2 else { throw ScalingError.fitFailed("\(source): \(rows.count) run(s); a fit needs results of several runs") }
        let groups = groups(rows)
        let budgets = groups.map { $0[0].budget }
        var notes: [String] = []
        let env = envelope(groups)
        let lossLaw = lossFit(groups)
        if budgets.count < 2 { notes.append("one budget only: no L(C) or N_opt(C) fit (give several --budgets)") }
        let minima = groups.compactMap { IsoFLOPAnalysis.minimum($0, window: o.profileWindow) }
        for b in budgets where !minima.contains(where: { $0.budget == b }) {
            notes.append("budget \(IsoFLOPPlanner.budgetLabel(b)): no IsoFLOP minimum (needs >= 3 sizes, a convex profile, a vertex within half a decade of the sizes trained)")
        }
        for m in minima where m.outsideGrid {
            notes.append("budget \(IsoFLOPPlanner.budgetLabel(m.budget)): the minimum lies outside the sizes trained (extrapolated); add sizes on that side")
        }
        let optima = optimaFits(groups, window: o.profileWindow)
        // With one budget D ∝ 1/N: the N and D terms cannot be told apart.
        let para = budgets.count < 2 ? nil
            : ParametricFit.fit(N: rows.map(\.params), D: rows.map(\.tokens), L: rows.map(\.loss), delta: o.huberDelta, starts: o.parametricStarts)
        if para == nil { notes.append("no parametric fit: it needs >= 5 runs at >= 2 budgets") }

        var rng = SplitMix64(seed: o.seed)
        var lossS: [[Double]] = [], nS: [[Double]] = [], dS: [[Double]] = [], pS: [[Double]] = []
        for i in 0..<max(o.bootstrap, o.parametricBootstrap) {
            let r = resample(groups, &rng)
            if i < o.bootstrap {
                if let l = lossFit(r) { lossS.append([l.a, l.b]) }
                if let (n, d) = optimaFits(r, window: o.profileWindow) { nS.append([n.a, n.b]); dS.append([d.a, d.b]) }
            }
            let flat = r.flatMap { $0 }
            if i < o.parametricBootstrap, let p = para, Set(flat.map(\.budget)).count >= 2,
               let f = ParametricFit.fit(N: flat.map(\.params), D: flat.map(\.tokens), L: flat.map(\.loss), delta: o.huberDelta, starts: p.topStarts) {
                let l = f.law
                pS.append([l.E, l.A, l.B, l.alpha, l.beta])
            }
        }
        func est(_ law: PowerLaw?, _ s: [[Double]]) -> PowerLawEstimate? {
            law.map { PowerLawEstimate(a: Estimate(value: $0.a, samples: s.map { $0[0] }, level: o.level),
                                       b: Estimate(value: $0.b, samples: s.map { $0[1] }, level: o.level), r2: $0.r2, samples: s) }
        }
        if optima != nil && nS.count < o.bootstrap / 2 {
            notes.append("only \(nS.count) of \(o.bootstrap) resamples gave an N_opt fit (a resampled budget with < 3 distinct sizes has no minimum): train more sizes per budget for reliable intervals")
        }
        var pe: ParametricEstimate? = nil
        if let p = para {
            let l = p.law
            func e(_ v: Double, _ k: Int) -> Estimate { Estimate(value: v, samples: pS.map { $0[k] }, level: o.level) }
            pe = ParametricEstimate(E: e(l.E, 0), A: e(l.A, 1), B: e(l.B, 2), alpha: e(l.alpha, 3), beta: e(l.beta, 4),
                                    nOptExponent: Estimate(value: l.nOptExponent, samples: pS.map { $0[4] / ($0[3] + $0[4]) }, level: o.level),
                                    huberDelta: o.huberDelta, objective: p.objective, starts: p.starts, converged: p.converged, samples: pS)
        }
        let k = rows.map { $0.flops / ($0.params * $0.tokens) }.sorted()
        return ScalingFitResult(source: source, runs: rows.count, budgets: budgets, level: o.level, bootstrap: o.bootstrap, seed: o.seed,
                                envelope: env, lossVsCompute: est(lossLaw, lossS), isoflop: minima, nOpt: est(optima?.0, nS),
                                dOpt: est(optima?.1, dS), parametric: pe, flopsPerParamToken: quantile(k, 0.5), profileWindow: o.profileWindow,
                                family: family, notes: notes)
    }
}
