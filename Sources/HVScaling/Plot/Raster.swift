import Foundation
import HVData

/// An RGB24 raster canvas: anti-aliased thick lines (coverage from the distance to each
/// segment), filled markers and the 5x7 bitmap font, for the PNG version of the plots.
public struct RasterCanvas: Canvas {
    public let width: Int, height: Int
    public private(set) var rgb: [UInt8]

    public init(width: Int, height: Int) {
        self.width = width; self.height = height
        rgb = [UInt8](repeating: 255, count: width * height * 3)
    }

    mutating func blend(_ x: Int, _ y: Int, _ c: RGB, _ a: Double) {
        guard x >= 0, y >= 0, x < width, y < height, a > 0 else { return }
        let i = (y * width + x) * 3, t = min(1, a)
        rgb[i] = UInt8(Double(rgb[i]) * (1 - t) + Double(c.r) * t)
        rgb[i + 1] = UInt8(Double(rgb[i + 1]) * (1 - t) + Double(c.g) * t)
        rgb[i + 2] = UInt8(Double(rgb[i + 2]) * (1 - t) + Double(c.b) * t)
    }

    mutating func segment(_ a: (Double, Double), _ b: (Double, Double), color: RGB, width w: Double) {
        let r = w / 2
        let x0 = Int((min(a.0, b.0) - r - 1).rounded(.down)), x1 = Int((max(a.0, b.0) + r + 1).rounded(.up))
        let y0 = Int((min(a.1, b.1) - r - 1).rounded(.down)), y1 = Int((max(a.1, b.1) + r + 1).rounded(.up))
        let dx = b.0 - a.0, dy = b.1 - a.1, len2 = dx * dx + dy * dy
        guard x1 - x0 < 20_000, y1 - y0 < 20_000 else { return }
        for y in max(0, y0)...min(height - 1, max(0, y1)) {
            for x in max(0, x0)...min(width - 1, max(0, x1)) {
                let px = Double(x) + 0.5, py = Double(y) + 0.5
                var t = len2 > 0 ? ((px - a.0) * dx + (py - a.1) * dy) / len2 : 0
                t = min(1, max(0, t))
                let qx = a.0 + t * dx - px, qy = a.1 + t * dy - py
                let d = (qx * qx + qy * qy).squareRoot()
                let cov = min(1, max(0, r + 0.5 - d))
                if cov > 0 { blend(x, y, color, cov) }
            }
        }
    }

    public mutating func line(_ pts: [(Double, Double)], color: RGB, width: Double, dashed: Bool) {
        guard pts.count >= 2 else { return }
        if !dashed {
            for i in 1..<pts.count { segment(pts[i - 1], pts[i], color: color, width: width) }
            return
        }
        // 6 px on, 4 px off along the arc length.
        var phase = 0.0
        for i in 1..<pts.count {
            let a = pts[i - 1], b = pts[i]
            let len = hypot(b.0 - a.0, b.1 - a.1)
            var s = 0.0
            while s < len {
                let inDash = phase < 6
                let step = min(len - s, inDash ? 6 - phase : 10 - phase)
                if inDash {
                    let p = (a.0 + (b.0 - a.0) * s / len, a.1 + (b.1 - a.1) * s / len)
                    let q = (a.0 + (b.0 - a.0) * (s + step) / len, a.1 + (b.1 - a.1) * (s + step) / len)
                    segment(p, q, color: color, width: width)
                }
                s += step
                phase = (phase + step).truncatingRemainder(dividingBy: 10)
            }
        }
    }

    public mutating func marker(_ kind: Marker, at p: (Double, Double), size s: Double, color: RGB) {
        switch kind {
        case .none: break
        case .circle:
            for y in Int(p.1 - s - 2)...Int(p.1 + s + 2) {
                for x in Int(p.0 - s - 2)...Int(p.0 + s + 2) {
                    let d = hypot(Double(x) + 0.5 - p.0, Double(y) + 0.5 - p.1)
                    blend(x, y, color, min(1, max(0, s + 0.5 - d)))
                }
            }
        case .square:
            for y in Int(p.1 - s)...Int(p.1 + s) { for x in Int(p.0 - s)...Int(p.0 + s) { blend(x, y, color, 1) } }
        case .star:
            let poly = starPoints(center: p, radius: s * 1.6)
            let r = Int(s * 1.6) + 2
            for y in Int(p.1) - r...Int(p.1) + r {
                for x in Int(p.0) - r...Int(p.0) + r {
                    // 2x2 supersampled even-odd test.
                    var hits = 0
                    for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                        if pointInPolygon((Double(x) + ox, Double(y) + oy), poly) { hits += 1 }
                    }
                    blend(x, y, color, Double(hits) / 4)
                }
            }
        }
    }

    public mutating func rect(x: Double, y: Double, w: Double, h: Double, stroke: RGB?, fill: RGB?) {
        if let fill {
            for yy in max(0, Int(y))..<min(height, Int(y + h)) { for xx in max(0, Int(x))..<min(width, Int(x + w)) { blend(xx, yy, fill, 1) } }
        }
        if let stroke {
            line([(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)], color: stroke, width: 1, dashed: false)
        }
    }

    public mutating func text(_ s: String, at p: (Double, Double), size: Double, color: RGB, anchor: Double, vertical: Bool) {
        let k = max(1, Int((size / 7).rounded()))
        let advance = 6 * k
        let length = Double(s.count * advance - k)
        for (i, ch) in s.enumerated() {
            for (gx, gy) in Font5x7.pixels(ch) {
                for dy in 0..<k {
                    for dx in 0..<k {
                        let u = i * advance + gx * k + dx, v = gy * k + dy
                        if vertical {
                            // Rotated 90° counter-clockwise, centred on p.1 when anchor = 0.5.
                            let x = Int(p.0) + v, y = Int(p.1 + length * anchor) - u
                            blend(x, y, color, 1)
                        } else {
                            blend(Int(p.0 - length * anchor) + u, Int(p.1) + v, color, 1)
                        }
                    }
                }
            }
        }
    }

    public func png() throws -> Data { try PNGWriter.encode(rgb: rgb, width: width, height: height) }
}

func pointInPolygon(_ p: (Double, Double), _ poly: [(Double, Double)]) -> Bool {
    var inside = false
    var j = poly.count - 1
    for i in 0..<poly.count {
        let a = poly[i], b = poly[j]
        if (a.1 > p.1) != (b.1 > p.1) && p.0 < (b.0 - a.0) * (p.1 - a.1) / (b.1 - a.1) + a.0 { inside.toggle() }
        j = i
    }
    return inside
}

extension Figure {
    public func png() throws -> Data {
        var c = RasterCanvas(width: width, height: height)
        draw(on: &c)
        return try c.png()
    }
}
