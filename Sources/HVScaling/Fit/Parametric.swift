import Foundation

/// L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's method 3).
public struct ParametricLaw: Codable, Sendable, Equatable {
    public var E: Double, A: Double, B: Double, alpha: Double, beta: Double

    public init(E: Double, A: Double, B: Double, alpha: Double, beta: Double) {
        self.E = E; self.A = A; self.B = B; self.alpha = alpha; self.beta = beta
    }

    /// Chinchilla's published fit (Hoffmann et al. 2022).
    public static let chinchilla = ParametricLaw(E: 1.69, A: 406.4, B: 410.7, alpha: 0.34, beta: 0.28)

    public func loss(N: Double, D: Double) -> Double { E + A / pow(N, alpha) + B / pow(D, beta) }

    /// The compute-optimal split when C = k·N·D: N_opt = G·(C/k)^(beta/(alpha+beta)),
    /// G = (alpha·A / (beta·B))^(1/(alpha+beta)); D_opt = C / (k·N_opt).
    public func optimum(compute C: Double, flopsPerParamToken k: Double) -> (N: Double, D: Double) {
        let G = pow(alpha * A / (beta * B), 1 / (alpha + beta))
        let N = G * pow(C / k, beta / (alpha + beta))
        return (N, C / (k * N))
    }

    /// The exponent of N_opt ∝ C^a under C ∝ N·D.
    public var nOptExponent: Double { beta / (alpha + beta) }
}

/// Fits `ParametricLaw` as Chinchilla did: minimise Σ Huber_δ(LSE(e, a - alpha·ln N, b - beta·ln D) - ln L)
/// over (e, a, b, alpha, beta) with E = exp(e), A = exp(a), B = exp(b), by L-BFGS from every
/// point of a grid of initialisations, keeping the best.
public enum ParametricFit {
    public struct Result: Sendable {
        public var law: ParametricLaw
        /// Best objective and the raw parameter vector (e, a, b, alpha, beta).
        public var objective: Double
        public var x: [Double]
        /// The best few distinct solutions' parameter vectors (good starts for bootstrap refits).
        public var topStarts: [[Double]]
        public var starts: Int
        public var converged: Bool
    }

    /// Chinchilla's grid: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}.
    public static var chinchillaGrid: [[Double]] {
        var g: [[Double]] = []
        for e in stride(from: -1.0, through: 1.0, by: 0.5) {
            for a in stride(from: 0.0, through: 25.0, by: 5) {
                for b in stride(from: 0.0, through: 25.0, by: 5) {
                    for al in stride(from: 0.0, through: 2.0, by: 0.5) {
                        for be in stride(from: 0.0, through: 2.0, by: 0.5) { g.append([e, a, b, al, be]) }
                    }
                }
            }
        }
        return g
    }

    public static func huber(_ r: Double, _ delta: Double) -> (value: Double, slope: Double) {
        abs(r) <= delta ? (0.5 * r * r, r) : (delta * (abs(r) - 0.5 * delta), r > 0 ? delta : -delta)
    }

    /// Objective and gradient at x = (e, a, b, alpha, beta).
    public static func objective(_ x: [Double], lnN: [Double], lnD: [Double], lnL: [Double], delta: Double, grad g: inout [Double]) -> Double {
        for i in 0..<5 { g[i] = 0 }
        var f = 0.0
        for i in 0..<lnN.count {
            let t0 = x[0], t1 = x[1] - x[3] * lnN[i], t2 = x[2] - x[4] * lnD[i]
            let m = max(t0, t1, t2)
            let w0 = exp(t0 - m), w1 = exp(t1 - m), w2 = exp(t2 - m)
            let s = w0 + w1 + w2
            let r = m + log(s) - lnL[i]
            let (h, dh) = huber(r, delta)
            f += h
            let p0 = w0 / s, p1 = w1 / s, p2 = w2 / s
            g[0] += dh * p0
            g[1] += dh * p1
            g[2] += dh * p2
            g[3] -= dh * p1 * lnN[i]
            g[4] -= dh * p2 * lnD[i]
        }
        return f
    }

    public static func fit(N: [Double], D: [Double], L: [Double], delta: Double = 1e-3, starts: [[Double]]? = nil) -> Result? {
        guard N.count >= 5 else { return nil }
        let lnN = N.map { log($0) }, lnD = D.map { log($0) }, lnL = L.map { log($0) }
        var opt = LBFGS()
        opt.maxIterations = 500
        opt.gradientTolerance = 1e-12
        var found: [(f: Double, x: [Double], converged: Bool)] = []
        let inits = starts ?? chinchillaGrid
        for x0 in inits {
            let r = opt.minimize(x0) { x, g in objective(x, lnN: lnN, lnD: lnD, lnL: lnL, delta: delta, grad: &g) }
            if r.f.isFinite && r.x.allSatisfy(\.isFinite) { found.append((r.f, r.x, r.converged)) }
        }
        found.sort { $0.f < $1.f }
        guard let best = found.first else { return nil }
        var top: [[Double]] = []
        for c in found where top.count < 5 {
            if !top.contains(where: { t in zip(t, c.x).allSatisfy { abs($0 - $1) < 1e-3 } }) { top.append(c.x) }
        }
        let x = best.x
        return Result(law: ParametricLaw(E: exp(x[0]), A: exp(x[1]), B: exp(x[2]), alpha: x[3], beta: x[4]), objective: best.f, x: x,
                      topStarts: top, starts: inits.count, converged: best.converged)
    }
}
