import Foundation
import HVScaling
import XCTest

/// Every fit recovers the exponents of data generated from a known law with noise, and its
/// bootstrap intervals cover the truth.
final class FitTests: XCTestCase {
    func logspace(_ a: Double, _ b: Double, _ n: Int) -> [Double] { (0..<n).map { a * pow(b / a, Double($0) / Double(n - 1)) } }

    /// L(C) = 12·C^-0.05 with 0.3% noise at 8 budgets, one run each.
    func testLossComputePowerLaw() throws {
        var rng = SplitMix64(seed: 1)
        let rows = logspace(1e17, 1e22, 8).enumerated().map { i, c in
            ScalingResult(run: "r\(i)", member: "m", budget: c, params: 1e8, tokens: c / 6e8, flops: c, loss: 12 * pow(c, -0.05) * exp(0.003 * rng.normal()))
        }
        var o = FitOptions()
        o.parametricBootstrap = 0
        o.parametricStarts = [[0, 5, 5, 0.5, 0.5]]
        let fit = try ScalingAnalysis.fit(rows, source: "synthetic", options: o)
        let l = try XCTUnwrap(fit.lossVsCompute)
        XCTAssertEqual(l.b.value, -0.05, accuracy: 0.02 * 0.05)
        XCTAssert(l.b.contains(-0.05), "interval \(l.b.lo)...\(l.b.hi)")
        XCTAssert(l.a.contains(12), "interval \(l.a.lo)...\(l.a.hi)")
        XCTAssertLessThan(l.b.hi - l.b.lo, 0.01, "the interval is uselessly wide")
        XCTAssertGreaterThan(l.b.hi - l.b.lo, 0, "a zero-width interval means the bootstrap did not resample")
    }

    /// IsoFLOP profiles of Chinchilla's law under C = 6ND: the parabola minima give N_opt ∝ C^(β/(α+β)) = C^0.4516
    /// and D_opt ∝ C^0.5484.
    func testIsoFLOPMinimaRecoverTheOptimalExponents() throws {
        let law = ParametricLaw.chinchilla
        var rng = SplitMix64(seed: 2)
        var rows: [ScalingResult] = []
        for (bi, c) in logspace(6e18, 6e21, 6).enumerated() {
            let nOpt = law.optimum(compute: c, flopsPerParamToken: 6).N
            // Nine sizes over ±0.6 decades, deliberately off-centre by a factor 1.4.
            for (i, n) in logspace(nOpt * 1.4 / 4, nOpt * 1.4 * 4, 9).enumerated() {
                let d = c / (6 * n)
                rows.append(ScalingResult(run: "b\(bi)-\(i)", member: "s\(i)", budget: c, params: n, tokens: d, flops: c,
                                          loss: law.loss(N: n, D: d) * exp(0.001 * rng.normal())))
            }
        }
        var o = FitOptions()
        o.parametricBootstrap = 0
        o.parametricStarts = [[0.5, 6, 6, 0.34, 0.28]]
        let fit = try ScalingAnalysis.fit(rows, source: "synthetic", options: o)
        XCTAssertEqual(fit.isoflop.count, 6)
        let n = try XCTUnwrap(fit.nOpt), d = try XCTUnwrap(fit.dOpt)
        let b1 = law.nOptExponent
        XCTAssertEqual(n.b.value, b1, accuracy: 0.02 * b1)
        XCTAssertEqual(d.b.value, 1 - b1, accuracy: 0.02 * (1 - b1))
        XCTAssert(n.b.contains(b1), "N_opt exponent interval \(n.b.lo)...\(n.b.hi) misses \(b1)")
        XCTAssert(d.b.contains(1 - b1), "D_opt exponent interval \(d.b.lo)...\(d.b.hi) misses \(1 - b1)")
        // The coefficient: N_opt at one budget within 10% of the closed form.
        let c = 1e20
        XCTAssertEqual(n.law(c) / law.optimum(compute: c, flopsPerParamToken: 6).N, 1, accuracy: 0.1)
        XCTAssertEqual(n.b.value + d.b.value, 1, accuracy: 1e-6, "C = 6ND makes the exponents sum to 1")
    }

    /// L(N, D) with Chinchilla's coefficients on a 7 x 7 grid, 0.2% noise: Huber + L-BFGS from the grid of starts
    /// recovers alpha and beta within 2%, and the bootstrap intervals cover them.
    func testParametricFitRecoversChinchilla() throws {
        let law = ParametricLaw.chinchilla
        var rng = SplitMix64(seed: 3)
        var rows: [ScalingResult] = []
        for (i, n) in logspace(1e7, 1e10, 7).enumerated() {
            for (j, d) in logspace(1e9, 1e12, 7).enumerated() {
                let c = 6 * n * d
                rows.append(ScalingResult(run: "n\(i)d\(j)", member: "s\(i)", budget: Double(j), params: n, tokens: d, flops: c,
                                          loss: law.loss(N: n, D: d) * exp(0.002 * rng.normal())))
            }
        }
        var o = FitOptions()
        o.bootstrap = 0
        o.parametricBootstrap = 100
        let fit = try ScalingAnalysis.fit(rows, source: "synthetic", options: o)
        let p = try XCTUnwrap(fit.parametric)
        XCTAssert(p.converged)
        XCTAssertEqual(p.alpha.value, law.alpha, accuracy: 0.02 * law.alpha)
        XCTAssertEqual(p.beta.value, law.beta, accuracy: 0.02 * law.beta)
        XCTAssertEqual(p.E.value, law.E, accuracy: 0.05 * law.E)
        XCTAssert(p.alpha.contains(law.alpha), "alpha interval \(p.alpha.lo)...\(p.alpha.hi)")
        XCTAssert(p.beta.contains(law.beta), "beta interval \(p.beta.lo)...\(p.beta.hi)")
        XCTAssert(p.E.contains(law.E), "E interval \(p.E.lo)...\(p.E.hi)")
        XCTAssertGreaterThan(p.samples.count, 90)
    }

    /// The Huber objective's gradient matches central finite differences.
    func testHuberObjectiveGradient() {
        let lnN = [16.0, 18, 20, 22], lnD = [20.0, 23, 21, 25], lnL = [1.0, 0.8, 0.75, 0.6]
        let x = [0.4, 6.0, 5.5, 0.35, 0.3]
        var g = [Double](repeating: 0, count: 5), scratch = g
        _ = ParametricFit.objective(x, lnN: lnN, lnD: lnD, lnL: lnL, delta: 0.05, grad: &g)
        for i in 0..<5 {
            var a = x, b = x
            a[i] += 1e-6; b[i] -= 1e-6
            let fd = (ParametricFit.objective(a, lnN: lnN, lnD: lnD, lnL: lnL, delta: 0.05, grad: &scratch)
                - ParametricFit.objective(b, lnN: lnN, lnD: lnD, lnL: lnL, delta: 0.05, grad: &scratch)) / 2e-6
            XCTAssertEqual(g[i], fd, accuracy: 1e-6 * max(1, abs(fd)))
        }
    }

    /// Percentile intervals of a known sampling distribution: the mean of 50 draws of N(3, 1),
    /// bootstrapped 400 times on 40 independent data sets, covers 3 about 95% of the time.
    func testBootstrapIntervalsCoverAtTheNominalRate() {
        var rng = SplitMix64(seed: 4)
        var covered = 0
        for _ in 0..<40 {
            let x = (0..<50).map { _ in 3 + rng.normal() }
            let means = (0..<400).map { _ in (0..<50).map { _ in x[rng.int(below: 50)] }.reduce(0, +) / 50 }
            if Estimate(value: x.reduce(0, +) / 50, samples: means).contains(3) { covered += 1 }
        }
        XCTAssertGreaterThanOrEqual(covered, 34)  // 95% of 40 = 38; binomial 1st percentile ~34
    }

    /// --profile-sizes 3: the parabola uses the best run and its two neighbours in size only.
    func testProfileWindowFitsAroundTheBestRun() throws {
        let n = [1e5, 2e5, 4e5, 8e5, 1.6e6], loss = [0.9, 0.6, 0.4, 0.45, 0.7]
        let g = zip(n, loss).map { ScalingResult(run: "\($0.0)", member: "", budget: 1e12, params: $0.0, tokens: 1e12 / $0.0, flops: 1e12, loss: $0.1) }
        let all = try XCTUnwrap(IsoFLOPAnalysis.minimum(g)), w = try XCTUnwrap(IsoFLOPAnalysis.minimum(g, window: 3))
        XCTAssertEqual(all.sizes, 5)
        XCTAssertEqual(w.sizes, 3)
        XCTAssertEqual(w.nLo, 2e5, accuracy: 1)
        XCTAssertEqual(w.nHi, 8e5, accuracy: 1)
        XCTAssert(w.nOpt > 2e5 && w.nOpt < 8e5)
        XCTAssertEqual(w.dOpt * w.nOpt, 1e12, accuracy: 1e3)
    }

    func testResultsCSVRoundTripAndBudgetGrouping() throws {
        let rows = [ScalingResult(run: "a", member: "L0", budget: 1e10, params: 1e5, tokens: 1e6, flops: 1.01e10, loss: 0.5, train_loss: 0.51,
                                  eval_loss: 0.5, steps: 10, batch: 8, flops_per_sample: 1e6, seconds: 1)]
        XCTAssertEqual(try ResultsCSV.parse(ResultsCSV.format(rows)), rows)
        // Only the four required columns: runs within 25% of each other's FLOPs share a budget.
        let csv = "params,tokens,flops,loss\n1e5,1e6,1e10,0.5\n2e5,5e5,1.1e10,0.45\n4e5,2.5e5,0.95e10,0.47\n1e5,3e6,3e10,0.4\n2e5,1.5e6,3.1e10,0.38\n"
        let parsed = try ResultsCSV.parse(csv)
        XCTAssertEqual(Set(parsed.map(\.budget)).count, 2)
        XCTAssertEqual(parsed.filter { $0.budget == parsed[0].budget }.count, 3)
        XCTAssertThrowsError(try ResultsCSV.parse("params,tokens,loss\n1,2,3\n")) { XCTAssert("\($0)".contains("flops")) }
    }
}
