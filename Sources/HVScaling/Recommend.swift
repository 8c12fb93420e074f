import Foundation

/// The compute-optimal model for a budget, from a fit.
public struct Recommendation: Sendable {
    public var compute: Double
    /// From the IsoFLOP power laws N_opt(C), D_opt(C).
    public var isoflop: (N: Estimate, D: Estimate)?
    /// From the parametric law, with C = k·N·D (k = the sweep's median FLOPs per parameter-token).
    public var parametric: (N: Estimate, D: Estimate)?
    public var expectedLoss: Estimate?
    /// The family member nearest N_opt (in ln N), and how long to train it at this budget.
    public var nearest: (name: String, params: Int, samples: Double, tokens: Double, steps: Int, batch: Int)?
    public var target: (name: String, params: Int)?
    public var level: Double
}

public enum Recommender {
    public static func recommend(fit r: ScalingFitResult, compute C: Double, family: ScalingFamily?) throws -> Recommendation {
        guard C > 0, C.isFinite else { throw ScalingError.invalidArgument("--compute must be a positive FLOP count") }
        var rec = Recommendation(compute: C, level: r.level)
        if let n = r.nOpt, let d = r.dOpt { rec.isoflop = (n.predict(C, level: r.level), d.predict(C, level: r.level)) }
        if let p = r.parametric {
            let k = r.flopsPerParamToken
            let best = p.law.optimum(compute: C, flopsPerParamToken: k)
            let opts = p.samples.map { ParametricLaw(E: $0[0], A: $0[1], B: $0[2], alpha: $0[3], beta: $0[4]).optimum(compute: C, flopsPerParamToken: k) }
            rec.parametric = (Estimate(value: best.N, samples: opts.map(\.N), level: r.level), Estimate(value: best.D, samples: opts.map(\.D), level: r.level))
            let losses = p.samples.enumerated().map { i, s in
                ParametricLaw(E: s[0], A: s[1], B: s[2], alpha: s[3], beta: s[4]).loss(N: opts[i].N, D: opts[i].D)
            }
            rec.expectedLoss = Estimate(value: p.law.loss(N: best.N, D: best.D), samples: losses, level: r.level)
        }
        guard let N = rec.isoflop?.N.value ?? rec.parametric?.N.value else {
            throw ScalingError.fitFailed("the fit has neither N_opt(C) nor a parametric law; sweep more budgets and sizes")
        }
        if let f = family {
            if let m = f.members.min(by: { abs(log(Double($0.params) / N)) < abs(log(Double($1.params) / N)) }) {
                let cost = SampleCost(run: m.run)
                let samples = C / cost.flops
                rec.nearest = (m.name, m.params, samples, samples * cost.tokens, Int((samples / Double(m.run.train.batch_size)).rounded()), m.run.train.batch_size)
            }
            if let t = f.target { rec.target = (t.name, t.model.parameterCount) }
        }
        return rec
    }

    public static func text(_ r: Recommendation, fit: ScalingFitResult) -> String {
        let G = 1e9, PF = 1e15
        func e(_ x: Estimate, _ u: Double) -> String { String(format: "%.4g [%.4g, %.4g]", x.value / u, x.lo / u, x.hi / u) }
        let pct = Int((r.level * 100).rounded())
        var s = String(format: "compute C = %.4g FLOPs = %.4g PetaFLOPs (fit: %@)\n", r.compute, r.compute / PF, fit.source)
        if let i = r.isoflop {
            s += "IsoFLOP laws:     N_opt = \(e(i.N, G)) B params, D_opt = \(e(i.D, G)) B tokens (\(pct)% intervals)\n"
        }
        if let p = r.parametric {
            s += "parametric L(N,D): N_opt = \(e(p.N, G)) B params, D_opt = \(e(p.D, G)) B tokens"
            s += String(format: " (C = %.3g·N·D)\n", fit.flopsPerParamToken)
            if let l = r.expectedLoss { s += String(format: "  expected loss %.5f [%.5f, %.5f]\n", l.value, l.lo, l.hi) }
        }
        let lo = fit.budgets.min() ?? r.compute, hi = fit.budgets.max() ?? r.compute
        if r.compute > 10 * (fit.budgets.max() ?? r.compute) || r.compute < (fit.budgets.min() ?? r.compute) / 10 {
            s += String(format: "note: C lies outside the swept budgets (%.3g-%.3g FLOPs) by more than 10x: an extrapolation\n", lo, hi)
        }
        if let n = r.nearest {
            s += "nearest family member: \(n.name) (\(formatCount(Double(n.params))) params): at this budget \(String(format: "%.4g", n.samples)) samples"
            s += " = \(String(format: "%.4g", n.tokens / G)) B tokens = \(n.steps) steps of batch \(n.batch)\n"
        }
        if let t = r.target, let N = r.isoflop?.N ?? r.parametric?.N {
            s += "family target \(t.name): \(formatCount(Double(t.params))) params = \(String(format: "%.3g", Double(t.params) / N.value))x N_opt\n"
        }
        return s
    }
}
