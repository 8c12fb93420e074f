import Foundation

/// A run's training-loss curve against compute (for the loss-vs-compute panel).
public struct LossCurve: Sendable {
    public var run: String
    public var params: Double
    /// (FLOPs so far, smoothed training loss).
    public var points: [(Double, Double)]
}

/// Training curves of a sweep directory's finished runs: loss smoothed by a moving mean over
/// 5% of the run, against steps x batch x FLOPs per sample; at most ~150 points, log-spaced.
public func loadLossCurves(out: String, results: [ScalingResult]) -> [LossCurve] {
    results.compactMap { r in
        guard let b = r.batch, let fps = r.flops_per_sample else { return nil }
        let c = readLossCurve(runDir: Sweep.runDir(out, r.run))
        guard c.count >= 2 else { return nil }
        let w = max(1, c.count / 20)
        var prefix = [0.0]
        for p in c { prefix.append(prefix.last! + p.loss) }
        var idx = Set<Int>()
        let n = c.count
        for k in 0..<150 { idx.insert(min(n - 1, Int(pow(Double(n), Double(k) / 149).rounded()) - 1)) }
        let pts = idx.sorted().filter { $0 >= 0 }.map { i -> (Double, Double) in
            let lo = max(0, i - w + 1)
            return (Double(c[i].step * b) * fps, (prefix[i + 1] - prefix[lo]) / Double(i + 1 - lo))
        }
        return LossCurve(run: r.run, params: r.params, points: pts)
    }
}

public enum ScalingPlot {
    /// The four-panel figure in the style of the paper's scaling figure: (a) loss vs compute per
    /// model size with the envelope and L(C); (b) IsoFLOP profiles; (c) N_opt(C); (d) D_opt(C).
    public static func figure(fit r: ScalingFitResult, rows: [ScalingResult], curves: [LossCurve], title: String) -> Figure {
        let PF = 1e15, G = 1e9
        let sizes = Array(Set(rows.map(\.params))).sorted()
        func sizeColor(_ n: Double) -> RGB { RGB.palette[(sizes.firstIndex(of: n) ?? 0) % RGB.palette.count] }
        let cmin = (rows.map(\.flops) + r.isoflop.map(\.flops)).min() ?? 1, cmax = (rows.map(\.flops) + r.isoflop.map(\.flops)).max() ?? 10
        let fitRange = (0..<40).map { cmin / 1.5 * pow(cmax * 1.5 / (cmin / 1.5), Double($0) / 39) }

        // (a)
        var a = Panel(title: "(a) loss vs compute per model size", x: Axis(label: "compute C [PetaFLOPs]", log: true), y: Axis(label: "loss", log: true))
        for c in curves {
            var s = Series(points: c.points.filter { $0.0 > 0 }.map { ($0.0 / PF, $0.1) }, color: sizeColor(c.params).lighter(0.45))
            s.width = 1.2
            a.series.append(s)
        }
        for n in sizes {
            let pts = rows.filter { $0.params == n }.sorted { $0.flops < $1.flops }.map { ($0.flops / PF, $0.loss) }
            var s = Series(points: pts, color: sizeColor(n))
            s.line = false; s.marker = .circle; s.markerSize = 4.5
            s.label = (rows.first { $0.params == n }?.member).map { $0.isEmpty ? formatCount(n) : "\($0) \(formatCount(n))" } ?? formatCount(n)
            if sizes.count > 8 && sizes.firstIndex(of: n)! % 2 == 1 { s.label = nil }
            a.series.append(s)
        }
        var env = Series(points: r.envelope.map { ($0.flops / PF, $0.loss) }, color: .black)
        env.marker = .star; env.markerSize = 5; env.width = 1; env.label = "envelope"
        a.series.append(env)
        if let l = r.lossVsCompute {
            var s = Series(points: fitRange.map { ($0 / PF, l.law($0)) }, color: .black)
            s.dashed = true; s.width = 1.5; s.label = "L = a·C^b"
            a.series.append(s)
            a.notes.append(String(format: "b = %.3f [%.3f, %.3f]", l.b.value, l.b.lo, l.b.hi))
        }
        if !curves.isEmpty { a.notes.append("lines: training loss; dots: final loss") }

        // (b)
        var b = Panel(title: "(b) IsoFLOP profiles", x: Axis(label: "parameters N", log: true), y: Axis(label: "final loss", log: true))
        let budgets = Array(Set(rows.map(\.budget))).sorted()
        for (i, c) in budgets.enumerated() {
            let color = RGB.palette[i % RGB.palette.count]
            let g = rows.filter { $0.budget == c }.sorted { $0.params < $1.params }
            var s = Series(points: g.map { ($0.params, $0.loss) }, color: color)
            s.line = false; s.marker = .circle; s.markerSize = 4.5
            s.label = "C=" + IsoFLOPPlanner.budgetLabel(c)
            if let m = r.isoflop.first(where: { $0.budget == c }) {
                let x0 = log(min(m.nLo, m.nOpt)) - 0.2, x1 = log(max(m.nHi, m.nOpt)) + 0.2
                // Only where the parabola stays near the data (a fit to a window of sizes can climb steeply outside it).
                let ceiling = 1.1 * (g.map(\.loss).max() ?? .infinity)
                var p = Series(points: (0..<60).map { k -> (Double, Double) in
                    let x = x0 + (x1 - x0) * Double(k) / 59
                    return (exp(x), m.c0 + m.c1 * x + m.c2 * x * x)
                }.filter { $0.1 <= ceiling }, color: color)
                p.width = 1.2
                b.series.append(p)
                var v = Series(points: [(m.nOpt, m.lossMin)], color: color)
                v.line = false; v.marker = .star; v.markerSize = 5
                b.series.append(v)
            }
            b.series.append(s)
        }
        if budgets.count > 8 { for i in b.series.indices where b.series[i].label != nil { b.series[i].label = nil } }
        b.notes.append("stars: parabola minima (N_opt)")
        b.notesCorner = .topLeft

        func optPanel(_ title: String, _ ylabel: String, _ e: PowerLawEstimate?, _ pts: [(Double, Double)], _ name: String) -> Panel {
            var p = Panel(title: title, x: Axis(label: "compute C [PetaFLOPs]", log: true), y: Axis(label: ylabel, log: true))
            p.legendCorner = .topLeft
            p.notesCorner = .bottomRight
            var s = Series(points: pts.map { ($0.0 / PF, $0.1 / G) }, color: RGB.palette[0])
            s.line = false; s.marker = .circle; s.markerSize = 5; s.label = "IsoFLOP minima"
            p.series.append(s)
            if let e {
                var f = Series(points: fitRange.map { ($0 / PF, e.law($0) / G) }, color: RGB.palette[3])
                f.width = 1.8; f.label = "fit"
                p.series.append(f)
                if !e.samples.isEmpty {
                    let band = fitRange.map { c in (c, e.predict(c)) }
                    var lo = Series(points: band.map { ($0.0 / PF, $0.1.lo / G) }, color: RGB.palette[3].lighter(0.4))
                    lo.dashed = true; lo.width = 1; lo.label = "\(Int((r.level * 100).rounded()))% interval"
                    var hi = Series(points: band.map { ($0.0 / PF, $0.1.hi / G) }, color: RGB.palette[3].lighter(0.4))
                    hi.dashed = true; hi.width = 1
                    p.series += [lo, hi]
                }
                let u = e.law.inUnits(x: PF, y: G)
                p.notes.append(String(format: "%@ = %.3g·C^%.3f", name, u.a, u.b))
                p.notes.append(String(format: "exponent [%.3f, %.3f]", e.b.lo, e.b.hi))
            } else {
                p.notes.append("no fit (needs minima at >= 2 budgets)")
            }
            return p
        }
        let c = optPanel("(c) optimal model size", "N_opt [billions of params]", r.nOpt, r.isoflop.map { ($0.flops, $0.nOpt) }, "N_opt")
        let d = optPanel("(d) optimal training tokens", "D_opt [billions of tokens]", r.dOpt, r.isoflop.map { ($0.flops, $0.dOpt) }, "D_opt")
        var panels = [a, b, c, d]
        for i in panels.indices { panels[i].autoscale() }
        return Figure(width: 1280, height: 960, columns: 2, title: title, panels: panels)
    }
}
