import Foundation

/// Collects a figure as SVG text.
public struct SVGCanvas: Canvas {
    public private(set) var body = ""
    public let width: Int, height: Int
    public init(width: Int, height: Int) { self.width = width; self.height = height }

    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
    static func n(_ v: Double) -> String { String(format: "%.2f", v) }

    public mutating func line(_ pts: [(Double, Double)], color: RGB, width: Double, dashed: Bool) {
        let d = pts.map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
        body += "<polyline points=\"\(d)\" fill=\"none\" stroke=\"\(color.hex)\" stroke-width=\"\(Self.n(width))\"\(dashed ? " stroke-dasharray=\"6,4\"" : "") stroke-linejoin=\"round\"/>\n"
    }

    public mutating func marker(_ kind: Marker, at p: (Double, Double), size s: Double, color: RGB) {
        switch kind {
        case .none: break
        case .circle: body += "<circle cx=\"\(Self.n(p.0))\" cy=\"\(Self.n(p.1))\" r=\"\(Self.n(s))\" fill=\"\(color.hex)\" stroke=\"white\" stroke-width=\"0.8\"/>\n"
        case .square: body += "<rect x=\"\(Self.n(p.0 - s))\" y=\"\(Self.n(p.1 - s))\" width=\"\(Self.n(2 * s))\" height=\"\(Self.n(2 * s))\" fill=\"\(color.hex)\"/>\n"
        case .star:
            let pts = starPoints(center: p, radius: s * 1.6).map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
            body += "<polygon points=\"\(pts)\" fill=\"\(color.hex)\" stroke=\"white\" stroke-width=\"0.6\"/>\n"
        }
    }

    public mutating func rect(x: Double, y: Double, w: Double, h: Double, stroke: RGB?, fill: RGB?) {
        body += "<rect x=\"\(Self.n(x))\" y=\"\(Self.n(y))\" width=\"\(Self.n(w))\" height=\"\(Self.n(h))\" fill=\"\(fill?.hex ?? "none")\"\(stroke.map { " stroke=\"\($0.hex)\" stroke-width=\"1\"" } ?? "")/>\n"
    }

    public mutating func text(_ s: String, at p: (Double, Double), size: Double, color: RGB, anchor: Double, vertical: Bool) {
        let a = anchor < 0.25 ? "start" : (anchor > 0.75 ? "end" : "middle")
        if vertical {
            let x = p.0 + size * 0.85
            body += "<text x=\"\(Self.n(x))\" y=\"\(Self.n(p.1))\" font-size=\"\(Self.n(size))\" font-family=\"DejaVu Sans, Helvetica, sans-serif\" text-anchor=\"\(a)\" fill=\"\(color.hex)\" transform=\"rotate(-90 \(Self.n(x)) \(Self.n(p.1)))\">\(Self.esc(s))</text>\n"
        } else {
            body += "<text x=\"\(Self.n(p.0))\" y=\"\(Self.n(p.1 + size * 0.85))\" font-size=\"\(Self.n(size))\" font-family=\"DejaVu Sans, Helvetica, sans-serif\" text-anchor=\"\(a)\" fill=\"\(color.hex)\">\(Self.esc(s))</text>\n"
        }
    }

    public var document: String {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\">\n" + body + "</svg>\n"
    }
}

/// A five-pointed star's outline (10 points).
func starPoints(center c: (Double, Double), radius r: Double) -> [(Double, Double)] {
    (0..<10).map { i in
        let a = -Double.pi / 2 + Double(i) * Double.pi / 5
        let rr = i % 2 == 0 ? r : r * 0.45
        return (c.0 + rr * cos(a), c.1 + rr * sin(a))
    }
}

extension Figure {
    public var svg: String {
        var c = SVGCanvas(width: width, height: height)
        draw(on: &c)
        return c.document
    }
}
