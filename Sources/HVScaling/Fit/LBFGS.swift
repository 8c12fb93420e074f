import Foundation

/// Limited-memory BFGS (Nocedal & Wright, Algorithm 7.4/7.5) with a line search satisfying the
/// strong Wolfe conditions (Algorithm 3.5 + zoom with cubic interpolation, 3.6).
public struct LBFGS: Sendable {
    public var memory = 10
    public var maxIterations = 1000
    /// Stop when ‖g‖∞ <= gradientTolerance · max(1, |f|).
    public var gradientTolerance = 1e-10
    /// Stop when the relative decrease of f over an iteration is below this.
    public var functionTolerance = 1e-15
    /// Armijo (c1) and curvature (c2) constants of the Wolfe conditions.
    public var c1 = 1e-4, c2 = 0.9

    public init() {}

    public struct Result: Sendable {
        public var x: [Double]
        public var f: Double
        public var gradientNorm: Double
        public var iterations: Int
        public var evaluations: Int
        public var converged: Bool
    }

    /// Minimises `fg`, which returns f(x) and fills the gradient.
    public func minimize(_ x0: [Double], _ fg: ([Double], inout [Double]) -> Double) -> Result {
        let n = x0.count
        var x = x0
        var g = [Double](repeating: 0, count: n)
        var evals = 1
        var f = fg(x, &g)
        var S: [[Double]] = [], Y: [[Double]] = [], rho: [Double] = []
        func dot(_ a: [Double], _ b: [Double]) -> Double { var s = 0.0; for i in 0..<a.count { s += a[i] * b[i] }; return s }
        func infNorm(_ a: [Double]) -> Double { a.map(abs).max() ?? 0 }
        guard f.isFinite else { return Result(x: x, f: f, gradientNorm: .infinity, iterations: 0, evaluations: 1, converged: false) }
        var it = 0
        while it < maxIterations {
            if infNorm(g) <= gradientTolerance * max(1, abs(f)) {
                return Result(x: x, f: f, gradientNorm: infNorm(g), iterations: it, evaluations: evals, converged: true)
            }
            // Two-loop recursion: d = -H g.
            var q = g
            var alpha = [Double](repeating: 0, count: S.count)
            for i in stride(from: S.count - 1, through: 0, by: -1) {
                alpha[i] = rho[i] * dot(S[i], q)
                for j in 0..<n { q[j] -= alpha[i] * Y[i][j] }
            }
            // Initial Hessian: gamma I from the newest pair; a unit-length first step.
            let gamma = S.isEmpty ? 1 / max(1, dot(g, g).squareRoot()) : dot(S.last!, Y.last!) / dot(Y.last!, Y.last!)
            for j in 0..<n { q[j] *= gamma }
            for i in 0..<S.count {
                let beta = rho[i] * dot(Y[i], q)
                for j in 0..<n { q[j] += S[i][j] * (alpha[i] - beta) }
            }
            var d = q.map { -$0 }
            var dg = dot(d, g)
            if !(dg < 0) {  // not a descent direction (numerical trouble): restart from steepest descent
                S.removeAll(); Y.removeAll(); rho.removeAll()
                d = g.map { -$0 }
                dg = dot(d, g)
            }
            guard let (step, fNew, gNew, used) = lineSearch(x: x, f: f, g: g, d: d, dg: dg, fg) else {
                return Result(x: x, f: f, gradientNorm: infNorm(g), iterations: it, evaluations: evals, converged: infNorm(g) <= 1e-6 * max(1, abs(f)))
            }
            evals += used
            let xNew = (0..<n).map { x[$0] + step * d[$0] }
            let s = (0..<n).map { xNew[$0] - x[$0] }, y = (0..<n).map { gNew[$0] - g[$0] }
            let sy = dot(s, y)
            if sy > 1e-300 {
                S.append(s); Y.append(y); rho.append(1 / sy)
                if S.count > memory { S.removeFirst(); Y.removeFirst(); rho.removeFirst() }
            }
            let decrease = f - fNew
            x = xNew; g = gNew
            let fOld = f
            f = fNew
            it += 1
            if decrease <= functionTolerance * max(abs(fOld), abs(fNew), 1e-300) {
                return Result(x: x, f: f, gradientNorm: infNorm(g), iterations: it, evaluations: evals, converged: true)
            }
        }
        return Result(x: x, f: f, gradientNorm: infNorm(g), iterations: it, evaluations: evals, converged: false)
    }

    /// Strong-Wolfe line search along d from x. Returns (step, f, g, evaluations) or nil.
    func lineSearch(x: [Double], f f0: Double, g g0: [Double], d: [Double], dg dg0: Double,
                    _ fg: ([Double], inout [Double]) -> Double) -> (Double, Double, [Double], Int)? {
        let n = x.count
        var evals = 0
        func phi(_ a: Double) -> (Double, Double, [Double]) {
            var g = [Double](repeating: 0, count: n)
            let f = fg((0..<n).map { x[$0] + a * d[$0] }, &g)
            evals += 1
            var s = 0.0
            for i in 0..<n { s += g[i] * d[i] }
            return (f, s, g)
        }
        func zoom(_ lo0: Double, _ flo0: Double, _ dlo0: Double, _ hi0: Double, _ fhi0: Double, _ dhi0: Double) -> (Double, Double, [Double])? {
            var lo = lo0, flo = flo0, dlo = dlo0, hi = hi0, fhi = fhi0, dhi = dhi0
            for _ in 0..<60 {
                // Cubic interpolation between lo and hi, safeguarded into the middle 80%.
                var a = (lo + hi) / 2
                let d1 = dlo + dhi - 3 * (flo - fhi) / (lo - hi)
                let disc = d1 * d1 - dlo * dhi
                if disc >= 0 {
                    let d2 = (hi > lo ? 1.0 : -1.0) * disc.squareRoot()
                    let c = hi - (hi - lo) * (dhi + d2 - d1) / (dhi - dlo + 2 * d2)
                    let left = min(lo, hi), right = max(lo, hi), w = right - left
                    if c.isFinite && c > left + 0.1 * w && c < right - 0.1 * w { a = c }
                }
                let (fa, da, ga) = phi(a)
                if !fa.isFinite || fa > f0 + c1 * a * dg0 || fa >= flo {
                    hi = a; fhi = fa.isFinite ? fa : .greatestFiniteMagnitude; dhi = da.isFinite ? da : 0
                } else {
                    if abs(da) <= -c2 * dg0 { return (a, fa, ga) }
                    if da * (hi - lo) >= 0 { hi = lo; fhi = flo; dhi = dlo }
                    lo = a; flo = fa; dlo = da
                }
                if abs(hi - lo) < 1e-16 * max(1, abs(lo)) { break }
            }
            // Accept the best point found if it decreases f at all.
            if lo > 0 && flo < f0 { var g = [Double](repeating: 0, count: n); let f = fg((0..<n).map { x[$0] + lo * d[$0] }, &g); evals += 1; return (lo, f, g) }
            return nil
        }
        var aPrev = 0.0, fPrev = f0, dPrev = dg0
        var a = 1.0
        for i in 0..<40 {
            let (fa, da, ga) = phi(a)
            if !fa.isFinite { a = (aPrev + a) / 2; continue }  // overshot into NaN/inf: shrink
            if fa > f0 + c1 * a * dg0 || (i > 0 && fa >= fPrev) {
                guard let r = zoom(aPrev, fPrev, dPrev, a, fa, da) else { return nil }
                return (r.0, r.1, r.2, evals)
            }
            if abs(da) <= -c2 * dg0 { return (a, fa, ga, evals) }
            if da >= 0 {
                guard let r = zoom(a, fa, da, aPrev, fPrev, dPrev) else { return nil }
                return (r.0, r.1, r.2, evals)
            }
            aPrev = a; fPrev = fa; dPrev = da
            a *= 2
        }
        return nil
    }
}
