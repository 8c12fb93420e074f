import Foundation

/// A small plotting model for the scaling figures: panels of log/linear axes holding polylines
/// and markers, drawn onto any `Canvas` (SVG text or an RGB raster for PNG).
public struct RGB: Sendable, Equatable {
    public var r: UInt8, g: UInt8, b: UInt8
    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }
    public var hex: String { String(format: "#%02x%02x%02x", r, g, b) }
    public static let black = RGB(0, 0, 0), white = RGB(255, 255, 255), grey = RGB(150, 150, 150), lightGrey = RGB(225, 225, 225)
    /// matplotlib's tab10.
    public static let palette = [RGB(31, 119, 180), RGB(255, 127, 14), RGB(44, 160, 44), RGB(214, 39, 40), RGB(148, 103, 189),
                                 RGB(140, 86, 75), RGB(227, 119, 194), RGB(127, 127, 127), RGB(188, 189, 34), RGB(23, 190, 207)]
    /// A blend toward white (t = 0: self, 1: white).
    public func lighter(_ t: Double) -> RGB {
        func m(_ c: UInt8) -> UInt8 { UInt8(Double(c) + (255 - Double(c)) * t) }
        return RGB(m(r), m(g), m(b))
    }
}

public enum Marker: Sendable { case none, circle, star, square }

public struct Series: Sendable {
    public var points: [(Double, Double)]
    public var color: RGB
    public var width: Double = 1.5
    public var dashed = false
    /// Draw the line through the points (false: markers only).
    public var line = true
    public var marker = Marker.none
    public var markerSize: Double = 4
    /// Shown in the legend when set.
    public var label: String? = nil
    public init(points: [(Double, Double)], color: RGB) { self.points = points; self.color = color }
}

public struct Axis: Sendable {
    public var label: String
    public var log: Bool
    public var min: Double
    public var max: Double
    public init(label: String, log: Bool, min: Double = .nan, max: Double = .nan) { self.label = label; self.log = log; self.min = min; self.max = max }

    func t(_ v: Double) -> Double { log ? Foundation.log10(v) : v }

    /// Tick values: decades on a log axis spanning >= 1 decade (with 2 and 5 when it spans < 3),
    /// else "nice" 1-2-5 steps.
    public func ticks() -> [Double] {
        if log && Foundation.log10(max / min) >= 1 {
            let lo = Int(Foundation.log10(min).rounded(.down)), hi = Int(Foundation.log10(max).rounded(.up))
            let span = hi - lo
            let stride = span > 8 ? 2 : 1
            var out: [Double] = []
            for k in lo...hi where (k - lo) % stride == 0 {
                for m in (span < 3 ? [1.0, 2, 5] : [1.0]) {
                    let v = m * pow(10, Double(k))
                    if v >= min * 0.999 && v <= max * 1.001 { out.append(v) }
                }
            }
            return out
        }
        let range = max - min
        guard range > 0 else { return [min] }
        let raw = range / 5
        let mag = pow(10, (Foundation.log10(raw)).rounded(.down))
        let step = [1.0, 2, 2.5, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        var v = (min / step).rounded(.up) * step
        var out: [Double] = []
        while v <= max + step * 1e-9 { out.append(abs(v) < step * 1e-9 ? 0 : v); v += step }
        return out
    }

    public static func label(_ v: Double, logDecades: Bool) -> String {
        func compact(_ s: String) -> String {
            s.replacingOccurrences(of: "e+0", with: "e").replacingOccurrences(of: "e+", with: "e").replacingOccurrences(of: "e-0", with: "e-")
        }
        if v != 0 && (abs(v) < 1e-2 || abs(v) >= 1e5) && !logDecades { return compact(String(format: "%.3g", v)) }
        if logDecades {
            let e = Foundation.log10(v)
            if abs(e - e.rounded()) < 1e-9 && (e < -2 || e > 3) { return "1e\(Int(e.rounded()))" }
            if abs(e) > 3 { return String(format: "%.0e", v).replacingOccurrences(of: "e+0", with: "e").replacingOccurrences(of: "e+", with: "e").replacingOccurrences(of: "e-0", with: "e-") }
        }
        return String(format: "%g", v)
    }
}

public struct Panel: Sendable {
    public var title: String
    public var x: Axis
    public var y: Axis
    public var series: [Series] = []
    /// Free text lines inside the plot area.
    public var notes: [String] = []
    public enum Corner: Sendable { case topLeft, topRight, bottomLeft, bottomRight }
    public var legendCorner = Corner.topRight
    public var notesCorner = Corner.bottomLeft
    public init(title: String, x: Axis, y: Axis) { self.title = title; self.x = x; self.y = y }

    /// Sets unset axis ranges from the data (5% padding, in log space on log axes).
    public mutating func autoscale() {
        func range(_ vals: [Double], _ a: inout Axis) {
            let v = vals.filter { $0.isFinite && (!a.log || $0 > 0) }
            guard var lo = v.min(), var hi = v.max() else { a.min = a.log ? 1 : 0; a.max = a.log ? 10 : 1; return }
            if a.log {
                var l = log10(lo), h = log10(hi)
                if h - l < 1e-6 { l -= 0.1; h += 0.1 }
                let pad = (h - l) * 0.05
                lo = pow(10, l - pad); hi = pow(10, h + pad)
            } else {
                if hi - lo < 1e-12 { lo -= 0.5; hi += 0.5 }
                let pad = (hi - lo) * 0.05
                lo -= pad; hi += pad
            }
            if !a.min.isFinite { a.min = lo }
            if !a.max.isFinite { a.max = hi }
        }
        range(series.flatMap { $0.points.map(\.0) }, &x)
        range(series.flatMap { $0.points.map(\.1) }, &y)
    }
}

/// Drawing primitives in pixel coordinates (origin top left).
public protocol Canvas {
    mutating func line(_ pts: [(Double, Double)], color: RGB, width: Double, dashed: Bool)
    mutating func marker(_ kind: Marker, at p: (Double, Double), size: Double, color: RGB)
    mutating func rect(x: Double, y: Double, w: Double, h: Double, stroke: RGB?, fill: RGB?)
    /// anchor: 0 start, 0.5 middle, 1 end. `vertical`: rotated 90° counter-clockwise.
    mutating func text(_ s: String, at p: (Double, Double), size: Double, color: RGB, anchor: Double, vertical: Bool)
}

public struct Figure: Sendable {
    public var width: Int
    public var height: Int
    public var columns: Int
    public var title: String
    public var panels: [Panel]
    public init(width: Int, height: Int, columns: Int, title: String, panels: [Panel]) {
        self.width = width; self.height = height; self.columns = columns; self.title = title; self.panels = panels
    }

    /// Text size in pixels (the raster font is 7 px tall at scale 1, so sizes are multiples of 7).
    public static let small = 14.0, large = 14.0

    public func draw<C: Canvas>(on c: inout C) {
        c.rect(x: 0, y: 0, w: Double(width), h: Double(height), stroke: nil, fill: .white)
        let top = 30.0
        c.text(title, at: (Double(width) / 2, 8), size: Figure.large, color: .black, anchor: 0.5, vertical: false)
        let rows = (panels.count + columns - 1) / columns
        let pw = Double(width) / Double(columns), ph = (Double(height) - top) / Double(rows)
        for (i, p) in panels.enumerated() {
            let ox = Double(i % columns) * pw, oy = top + Double(i / columns) * ph
            drawPanel(p, x: ox, y: oy, w: pw, h: ph, on: &c)
        }
    }

    func drawPanel<C: Canvas>(_ p: Panel, x ox: Double, y oy: Double, w: Double, h: Double, on c: inout C) {
        let left = ox + 100, right = ox + w - 16, top = oy + 28, bottom = oy + h - 52
        let pw = right - left, ph = bottom - top
        func X(_ v: Double) -> Double { left + (p.x.t(v) - p.x.t(p.x.min)) / (p.x.t(p.x.max) - p.x.t(p.x.min)) * pw }
        func Y(_ v: Double) -> Double { bottom - (p.y.t(v) - p.y.t(p.y.min)) / (p.y.t(p.y.max) - p.y.t(p.y.min)) * ph }
        c.text(p.title, at: (left + pw / 2, oy + 6), size: Figure.small, color: .black, anchor: 0.5, vertical: false)
        // Grid and ticks.
        let xDecades = p.x.log && log10(p.x.max / p.x.min) >= 1, yDecades = p.y.log && log10(p.y.max / p.y.min) >= 1
        for v in p.x.ticks() {
            let px = X(v)
            c.line([(px, top), (px, bottom)], color: .lightGrey, width: 1, dashed: false)
            c.line([(px, bottom), (px, bottom + 5)], color: .black, width: 1, dashed: false)
            c.text(Axis.label(v, logDecades: xDecades), at: (px, bottom + 9), size: Figure.small, color: .black, anchor: 0.5, vertical: false)
        }
        for v in p.y.ticks() {
            let py = Y(v)
            c.line([(left, py), (right, py)], color: .lightGrey, width: 1, dashed: false)
            c.line([(left - 5, py), (left, py)], color: .black, width: 1, dashed: false)
            c.text(Axis.label(v, logDecades: yDecades), at: (left - 8, py - 7), size: Figure.small, color: .black, anchor: 1, vertical: false)
        }
        c.rect(x: left, y: top, w: pw, h: ph, stroke: .black, fill: nil)
        c.text(p.x.label, at: (left + pw / 2, bottom + 30), size: Figure.small, color: .black, anchor: 0.5, vertical: false)
        c.text(p.y.label, at: (ox + 8, top + ph / 2), size: Figure.small, color: .black, anchor: 0.5, vertical: true)
        // Data, clipped to the plot area.
        func inside(_ q: (Double, Double)) -> Bool {
            q.0.isFinite && q.1.isFinite && q.0 >= left - 0.5 && q.0 <= right + 0.5 && q.1 >= top - 0.5 && q.1 <= bottom + 0.5
        }
        for s in p.series {
            let pts = s.points.filter { $0.0.isFinite && $0.1.isFinite && (!p.x.log || $0.0 > 0) && (!p.y.log || $0.1 > 0) }.map { (X($0.0), Y($0.1)) }
            if s.line && pts.count >= 2 {
                var run: [(Double, Double)] = []
                for q in pts {
                    if inside(q) { run.append(q) } else { if run.count >= 2 { c.line(run, color: s.color, width: s.width, dashed: s.dashed) }; run = [] }
                }
                if run.count >= 2 { c.line(run, color: s.color, width: s.width, dashed: s.dashed) }
            }
            if s.marker != .none { for q in pts where inside(q) { c.marker(s.marker, at: q, size: s.markerSize, color: s.color) } }
        }
        // Legend and notes, each in its corner.
        let labelled = p.series.filter { $0.label != nil }
        func firstLine(_ corner: Panel.Corner, _ count: Int) -> Double {
            corner == .topLeft || corner == .topRight ? top + 8 : bottom - 8 - 18 * Double(count) + 4
        }
        let legendRight = p.legendCorner == .topRight || p.legendCorner == .bottomRight
        var ly = firstLine(p.legendCorner, labelled.count)
        for s in labelled {
            // Symbol then text on the left; text then symbol on the right.
            let sx = legendRight ? right - 32 : left + 8
            let tx = legendRight ? right - 38 : left + 40
            c.text(s.label!, at: (tx, ly), size: Figure.small, color: .black, anchor: legendRight ? 1 : 0, vertical: false)
            if s.line { c.line([(sx, ly + 7), (sx + 24, ly + 7)], color: s.color, width: s.width, dashed: s.dashed) }
            if s.marker != .none { c.marker(s.marker, at: (sx + 12, ly + 7), size: s.markerSize, color: s.color) }
            ly += 18
        }
        let notesRight = p.notesCorner == .topRight || p.notesCorner == .bottomRight
        var ny = firstLine(p.notesCorner, p.notes.count)
        for n in p.notes {
            c.text(n, at: (notesRight ? right - 8 : left + 8, ny), size: Figure.small, color: .black, anchor: notesRight ? 1 : 0, vertical: false)
            ny += 18
        }
    }
}
