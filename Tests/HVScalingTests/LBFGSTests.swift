import Foundation
import HVScaling
import XCTest

/// The hand-written L-BFGS on functions with known minima.
final class LBFGSTests: XCTestCase {
    /// Rosenbrock f = Σ 100 (x_{i+1} - x_i²)² + (1 - x_i)²: minimum 0 at (1, ..., 1), a curved valley.
    func rosenbrock(_ x: [Double], _ g: inout [Double]) -> Double {
        var f = 0.0
        for i in 0..<x.count { g[i] = 0 }
        for i in 0..<(x.count - 1) {
            let a = x[i + 1] - x[i] * x[i], b = 1 - x[i]
            f += 100 * a * a + b * b
            g[i] += -400 * x[i] * a - 2 * b
            g[i + 1] += 200 * a
        }
        return f
    }

    func testFindsTheRosenbrockMinimumIn2D() {
        let r = LBFGS().minimize([-1.2, 1]) { rosenbrock($0, &$1) }
        XCTAssert(r.converged)
        XCTAssertEqual(r.x[0], 1, accuracy: 1e-6)
        XCTAssertEqual(r.x[1], 1, accuracy: 1e-6)
        XCTAssertLessThan(r.f, 1e-12)
        XCTAssertLessThan(r.iterations, 200)
    }

    func testFindsTheRosenbrockMinimumIn10D() {
        let r = LBFGS().minimize((0..<10).map { $0 % 2 == 0 ? -1.2 : 1 }) { rosenbrock($0, &$1) }
        for v in r.x { XCTAssertEqual(v, 1, accuracy: 1e-5) }
    }

    /// An ill-conditioned quadratic (condition number 1e6): minimum at c.
    func testIllConditionedQuadratic() {
        let c = [3.0, -2.0, 0.5, 7.0]
        let d = [1.0, 1e2, 1e4, 1e6]
        let r = LBFGS().minimize([0, 0, 0, 0]) { x, g in
            var f = 0.0
            for i in 0..<4 { f += 0.5 * d[i] * (x[i] - c[i]) * (x[i] - c[i]); g[i] = d[i] * (x[i] - c[i]) }
            return f
        }
        for i in 0..<4 { XCTAssertEqual(r.x[i], c[i], accuracy: 1e-5 * max(1, abs(c[i]))) }
    }

    /// A start where the function is infinite along the first step (log barrier): the line search backs off.
    func testBacksOffFromNonFiniteValues() {
        // f = x - log(x) has its minimum 1 at x = 1 and is +inf (NaN) for x <= 0.
        let r = LBFGS().minimize([0.05]) { x, g in
            g[0] = 1 - 1 / x[0]
            return x[0] > 0 ? x[0] - log(x[0]) : .nan
        }
        XCTAssertEqual(r.x[0], 1, accuracy: 1e-6)
    }
}
