import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import HVScaling
import XCTest

final class PlotTests: XCTestCase {
    func figure() -> Figure {
        var p = Panel(title: "test <&>", x: Axis(label: "C", log: true), y: Axis(label: "loss", log: true))
        var s = Series(points: [(1e10, 1.0), (1e11, 0.7), (1e12, 0.5)], color: RGB.palette[0])
        s.marker = .star; s.label = "envelope"; s.dashed = true
        p.series = [s]
        p.notes = ["b = -0.1"]
        p.autoscale()
        return Figure(width: 400, height: 300, columns: 1, title: "t", panels: [p])
    }

    /// The SVG parses as XML and escapes text.
    func testSVGIsWellFormed() throws {
        let svg = figure().svg
        let parser = XMLParser(data: Data(svg.utf8))
        XCTAssert(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? "")")
        XCTAssert(svg.contains("test &lt;&amp;&gt;"))
        XCTAssert(svg.contains("<polyline"))
    }

    /// The PNG encodes (PNG signature) and the raster has ink where the data line runs.
    func testPNGRendersTheData() throws {
        let png = try figure().png()
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var c = RasterCanvas(width: 50, height: 50)
        c.line([(5, 25), (45, 25)], color: .black, width: 2, dashed: false)
        XCTAssertLessThan(c.rgb[(25 * 50 + 25) * 3], 60)
        XCTAssertEqual(c.rgb[(5 * 50 + 25) * 3], 255)
    }

    func testLogTicks() {
        XCTAssertEqual(Axis(label: "", log: true, min: 0.9e10, max: 2e13).ticks(), [1e10, 1e11, 1e12, 1e13])
        let t = Axis(label: "", log: true, min: 0.35, max: 0.9).ticks()
        XCTAssert(t.count >= 3 && t.allSatisfy { $0 >= 0.35 && $0 <= 0.9 }, "\(t)")
    }
}
