import Foundation

/// y = a·x^b, fitted by least squares on (ln x, ln y).
public struct PowerLaw: Codable, Sendable, Equatable {
    public var a: Double
    public var b: Double
    public var r2: Double

    public init(a: Double, b: Double, r2: Double = 1) { self.a = a; self.b = b; self.r2 = r2 }

    public static func fit(x: [Double], y: [Double]) -> PowerLaw? {
        let pairs = zip(x, y).filter { $0.0 > 0 && $0.1 > 0 && $0.0.isFinite && $0.1.isFinite }
        guard let l = linearFit(pairs.map { log($0.0) }, pairs.map { log($0.1) }) else { return nil }
        return PowerLaw(a: exp(l.intercept), b: l.slope, r2: l.r2)
    }

    public func callAsFunction(_ x: Double) -> Double { a * pow(x, b) }

    /// The same law with x measured in units of `xUnit` and y in units of `yUnit`
    /// (e.g. C in PetaFLOPs and N in billions, as the paper's table).
    public func inUnits(x xUnit: Double, y yUnit: Double) -> PowerLaw {
        PowerLaw(a: a * pow(xUnit, b) / yUnit, b: b, r2: r2)
    }
}
