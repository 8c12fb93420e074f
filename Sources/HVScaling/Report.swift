import Foundation

/// The paper's fits (HunyuanVideo, arXiv 2412.03603; REFERENCE.md "Scaling laws"): N and D in
/// billions, C in PetaFLOPs.
public enum PaperFits {
    public struct Row: Sendable { public var name: String; public var a1, b1, a2, b2: Double }
    public static let image = Row(name: "paper T2X(I)", a1: 5.48e-4, b1: 0.5634, a2: 0.324, b2: 0.4325)
    public static let video = Row(name: "paper T2X(V)", a1: 0.0189, b1: 0.3618, a2: 0.0108, b2: 0.6289)
}

public enum FitReport {
    /// `a` of y = a·C^b re-expressed with C in `cu` and y in `yu`, for every bootstrap sample.
    static func unitEstimate(_ e: PowerLawEstimate, cu: Double, yu: Double, level: Double) -> (a: Estimate, b: Estimate) {
        let l = e.law.inUnits(x: cu, y: yu)
        return (Estimate(value: l.a, samples: e.samples.map { $0[0] * pow(cu, $0[1]) / yu }, level: level), e.b)
    }

    static func f(_ e: Estimate, _ fmt: String = "%.4g") -> String {
        String(format: fmt, e.value) + " [" + String(format: fmt, e.lo) + ", " + String(format: fmt, e.hi) + "]"
    }

    public static func text(_ r: ScalingFitResult) -> String {
        let PF = 1e15, G = 1e9
        let pct = Int((r.level * 100).rounded())
        var s = "hv-scaling fit: \(r.source)\n"
        s += "\(r.runs) runs at \(r.budgets.count) budgets (\(r.budgets.map { IsoFLOPPlanner.budgetLabel($0) }.joined(separator: ", ")) FLOPs); "
        s += "\(pct)% bootstrap intervals from \(r.bootstrap) resamples of the runs within each budget (seed \(r.seed)).\n"
        s += "Units as the paper's table: N and D in billions, C in PetaFLOPs (1e15 FLOPs).\n"
        s += String(format: "FLOPs per parameter-token (median over runs): %.3g (6·N·D would say 6; dual-stream blocks apply half\n", r.flopsPerParamToken)
        s += "their weights to each token, the text embedders only to text tokens, and attention adds a term in S)\n\n"

        s += "(a) Loss-compute envelope: the lowest final loss at each budget\n"
        s += "  " + lpad("C [PF]", 12) + "  " + rpad("run", 22) + lpad("N [B]", 11) + lpad("loss", 11) + "\n"
        for e in r.envelope {
            s += "  " + lpad(String(format: "%.4g", e.flops / PF), 12) + "  " + rpad(e.run, 22) + lpad(String(format: "%.4g", e.params / G), 11)
                + lpad(String(format: "%.5f", e.loss), 11) + "\n"
        }
        if let l = r.lossVsCompute {
            let u = unitEstimate(l, cu: PF, yu: 1, level: r.level)
            s += "  L(C) = a·C^b, C in PF:  a = \(f(u.a))  b = \(f(u.b))  (r² \(String(format: "%.3f", l.r2)), \(l.samples.count) resamples)\n"
        }
        s += "\n(b) IsoFLOP profiles: a parabola of loss in ln N per budget"
            + (r.profileWindow.map { " (the \($0) sizes around the best run)" } ?? "") + "; its vertex is N_opt\n"
        s += "  " + lpad("C [PF]", 12) + lpad("sizes", 7) + lpad("N_opt [B]", 13) + lpad("D_opt [B]", 13) + lpad("L_min", 11) + "\n"
        for m in r.isoflop {
            s += "  " + lpad(String(format: "%.4g", m.flops / PF), 12) + lpad("\(m.sizes)", 7) + lpad(String(format: "%.4g", m.nOpt / G), 13)
                + lpad(String(format: "%.4g", m.dOpt / G), 13) + lpad(String(format: "%.5f", m.lossMin), 11)
                + (m.outsideGrid ? "  (outside the sizes trained)" : "") + "\n"
        }
        if let n = r.nOpt, let d = r.dOpt {
            let nu = unitEstimate(n, cu: PF, yu: G, level: r.level), du = unitEstimate(d, cu: PF, yu: G, level: r.level)
            s += "  N_opt = a1·C^b1, D_opt = a2·C^b2 (\(n.samples.count) usable resamples):\n"
            func row(_ c: [String]) -> String { "  " + rpad(c[0], 14) + rpad(c[1], 36) + rpad(c[2], 30) + rpad(c[3], 36) + c[4] + "\n" }
            s += row(["", "a1", "b1", "a2", "b2"])
            s += row(["this sweep", f(nu.a), f(nu.b), f(du.a), f(du.b)])
            for p in [PaperFits.image, PaperFits.video] {
                s += row([p.name, String(format: "%.4g", p.a1), String(format: "%.4f", p.b1), String(format: "%.4g", p.a2), String(format: "%.4f", p.b2)])
            }
            s += String(format: "  b1 + b2 = %.3f (1 when C ∝ N·D)\n", n.b.value + d.b.value)
        } else {
            s += "  no N_opt(C) fit: needs IsoFLOP minima at >= 2 budgets\n"
        }
        s += "\n(c) Parametric fit L(N, D) = E + A/N^alpha + B/D^beta\n"
        if let p = r.parametric {
            s += "  Huber delta \(p.huberDelta) on ln L, L-BFGS from \(p.starts) starts (best objective \(String(format: "%.4g", p.objective))\(p.converged ? "" : ", NOT converged")), \(p.samples.count) bootstrap refits\n"
            s += "  E = \(f(p.E))  A = \(f(p.A))  B = \(f(p.B))\n"
            s += "  alpha = \(f(p.alpha))  beta = \(f(p.beta))\n"
            s += "  implied N_opt ∝ C^(beta/(alpha+beta)) = C^\(f(p.nOptExponent, "%.3f"))\n"
            let c = ParametricLaw.chinchilla
            s += "  for reference, Chinchilla (LLMs): E = \(c.E), A = \(c.A), B = \(c.B), alpha = \(c.alpha), beta = \(c.beta) (N_opt ∝ C^\(String(format: "%.3f", c.nOptExponent)))\n"
        } else {
            s += "  not fitted (needs >= 5 runs at >= 2 budgets)\n"
        }
        if !r.notes.isEmpty { s += "\nNotes:\n" + r.notes.map { "  - \($0)\n" }.joined() }
        return s
    }

    public static func writeJSON(_ r: ScalingFitResult, to path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try enc.encode(r).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    public static func readJSON(_ path: String) throws -> ScalingFitResult {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw ScalingError.unreadable(file: path, reason: "no fit here (run `hv-scaling fit` first)")
        }
        let dec = JSONDecoder()
        dec.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        do { return try dec.decode(ScalingFitResult.self, from: d) } catch { throw ScalingError.results(file: path, message: "\(error)") }
    }
}
