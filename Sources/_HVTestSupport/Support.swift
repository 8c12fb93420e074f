import Foundation
import HVTensor

/// Max absolute difference between two equally shaped tensors.
public func maxAbsDiff(_ a: Tensor, _ b: Tensor) -> Float {
    precondition(a.shape == b.shape, "maxAbsDiff: \(a.shape) vs \(b.shape)")
    return zip(a.scalars, b.scalars).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// True when |a - b| <= atol + rtol * |b| elementwise.
public func allClose(_ a: Tensor, _ b: Tensor, rtol: Float = 1e-5, atol: Float = 1e-6) -> Bool {
    guard a.shape == b.shape else { return false }
    return zip(a.scalars, b.scalars).allSatisfy { abs($0 - $1) <= atol + rtol * abs($1) }
}

public struct GradCheckFailure: CustomStringConvertible {
    public let input: Int, index: Int
    public let analytic: Double, numeric: Double
    public var description: String { "input \(input)[\(index)]: analytic \(analytic), numeric \(numeric)" }
}

/// Central finite differences of L = sum(f(inputs) * R) (R fixed random) against autodiff.
/// Checks up to `maxElements` entries per input (spread evenly). Returns the failures.
/// fp32 compute, so tolerances are relative to the gradient scale of the problem.
public func gradCheck(_ inputs: [Tensor], eps: Float = 1e-2, rtol: Double = 2e-2, atol: Double = 2e-3,
                      maxElements: Int = 64, seed: UInt64 = 7, _ f: ([Tensor]) -> Tensor) -> [GradCheckFailure] {
    for t in inputs { t.requiresGrad = true; t.zeroGrad() }
    let out = f(inputs)
    var rng = HVRandom(seed: seed)
    let r = Tensor.randn(out.shape, rng: &rng)
    let rs = r.scalars
    (out * r).sum().backward()
    func loss() -> Double {
        GradMode.withoutGrad {
            let o = f(inputs).scalars
            var s = 0.0
            for i in 0..<o.count { s += Double(o[i]) * Double(rs[i]) }
            return s
        }
    }
    var failures: [GradCheckFailure] = []
    for (ii, t) in inputs.enumerated() {
        let analytic = t.grad?.scalars ?? [Float](repeating: 0, count: t.count)
        let n = t.count
        let step = max(1, n / maxElements)
        for idx in Swift.stride(from: 0, to: n, by: step) {
            let p = t.pointer + idx  // inputs are contiguous leaves
            let orig = p.pointee
            p.pointee = orig + eps
            let lp = loss()
            p.pointee = orig - eps
            let lm = loss()
            p.pointee = orig
            let numeric = (lp - lm) / (2 * Double(eps))
            let a = Double(analytic[idx])
            if abs(a - numeric) > atol + rtol * max(abs(a), abs(numeric)) {
                failures.append(GradCheckFailure(input: ii, index: idx, analytic: a, numeric: numeric))
            }
        }
    }
    return failures
}

/// Directional finite-difference check: for a seeded random direction v over every element of
/// `input`, compares the analytic derivative sum(grad * v) of L = sum(f() * r) with the central
/// difference (L(w + eps v) - L(w - eps v)) / 2 eps. One number sums thousands of gradient
/// elements, so it stays well above float32 rounding where single-element differences of a deep
/// network drown in it; a wrong gradient (sign, scale, a dropped term) still moves it.
/// Returns (analytic, numeric).
public func directionalGradCheck(_ input: Tensor, eps: Float, seed: UInt64 = 11, _ f: () -> Tensor) -> (analytic: Double, numeric: Double) {
    input.requiresGrad = true
    input.zeroGrad()
    let out = f()
    var rng = HVRandom(seed: seed)
    let rs = Tensor.randn(out.shape, rng: &rng).scalars
    (out * Tensor(rs, shape: out.shape)).sum().backward()
    let g = input.grad!.scalars
    let v = Tensor.randn(input.shape, rng: &rng).scalars
    var analytic = 0.0
    for i in 0..<g.count { analytic += Double(g[i]) * Double(v[i]) }
    let orig = input.scalars
    func loss(_ t: Float) -> Double {
        for i in 0..<orig.count { input.pointer[i] = orig[i] + t * v[i] }
        return GradMode.withoutGrad {
            let o = f().scalars
            var s = 0.0
            for i in 0..<o.count { s += Double(o[i]) * Double(rs[i]) }
            return s
        }
    }
    let numeric = (loss(eps) - loss(-eps)) / (2 * Double(eps))
    for i in 0..<orig.count { input.pointer[i] = orig[i] }
    return (analytic, numeric)
}

/// A seeded normal tensor (test inputs).
public func randomTensor(_ shape: [Int], seed: UInt64, std: Float = 1) -> Tensor {
    var rng = HVRandom(seed: seed)
    return Tensor.randn(shape, std: std, rng: &rng)
}

/// Peak resident memory of this process so far, bytes.
public func peakRSSBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}
