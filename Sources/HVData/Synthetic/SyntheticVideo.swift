import Foundation

/// Seeded synthetic text-to-video clips in pixel space: one coloured shape (square, circle,
/// triangle) moving in a direction over a gradient background, with optional camera pan/zoom,
/// and a structured caption with the paper's fields. Clip i is a pure function of (seed, i).
public struct SyntheticVideo: Sendable {
    public static let colors: [(name: String, rgb: (Float, Float, Float))] = [
        ("red", (0.9, 0.1, 0.1)), ("green", (0.1, 0.8, 0.2)), ("blue", (0.15, 0.25, 0.95)),
        ("yellow", (0.95, 0.9, 0.1)), ("purple", (0.6, 0.15, 0.8)), ("cyan", (0.1, 0.85, 0.9)),
    ]
    public static let shapes = ["square", "circle", "triangle"]
    public static let directions = ["left", "right", "up", "down"]
    public static let cameras = ["static", "pan left", "pan right", "zoom in"]
    public static let backgrounds = ["dark gray", "light gray", "warm beige", "cool blue"]

    /// Sub-samples per pixel side for the shape's anti-aliased edge.
    static let subsamples = 4

    public let size: Int, frames: Int, seed: UInt64
    public init(size: Int = 64, frames: Int = 17, seed: UInt64 = 0) {
        self.size = size; self.frames = frames; self.seed = seed
    }

    public struct Caption: Codable, Sendable, Equatable {
        public var short_description: String
        public var dense_description: String
        public var background: String
        public var style: String
        public var lighting: String
        public var atmosphere: String
        public var camera_movement: String
    }

    public struct Clip: Sendable {
        /// RGB in [0, 1], [frames][size * size * 3] row-major.
        public var frames: [[Float]]
        public var caption: Caption
        public var color: Int, shape: Int, direction: Int, camera: Int
    }

    /// Splitmix-style stateless draws so that the generator needs no RNG type.
    private func draw(_ i: Int, _ k: UInt64) -> Double {
        var z = seed &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15 &+ k &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }

    public func clip(_ i: Int) -> Clip {
        let color = Int(draw(i, 1) * Double(Self.colors.count)), shape = Int(draw(i, 2) * Double(Self.shapes.count))
        let direction = Int(draw(i, 3) * 4), camera = Int(draw(i, 4) * Double(Self.cameras.count))
        let bgKind = Int(draw(i, 5) * Double(Self.backgrounds.count))
        let bg: [(Float, Float, Float)] = [(0.2, 0.2, 0.22), (0.75, 0.75, 0.75), (0.85, 0.75, 0.6), (0.55, 0.65, 0.85)]
        let S = Float(size)
        let r = S * Float(0.12 + 0.06 * draw(i, 6))
        let speed = S * 0.5 / Float(max(frames - 1, 1))
        let (dx, dy): (Float, Float) = [(-1, 0), (1, 0), (0, -1), (0, 1)][direction]
        var cx = S / 2 - dx * S * 0.25 + Float(draw(i, 7) - 0.5) * S * 0.1
        var cy = S / 2 - dy * S * 0.25 + Float(draw(i, 8) - 0.5) * S * 0.1
        let col = Self.colors[color].rgb, b = bg[bgKind]
        var out: [[Float]] = []
        for t in 0..<frames {
            var img = [Float](repeating: 0, count: size * size * 3)
            let pan: Float = camera == 1 ? -Float(t) * 0.5 : (camera == 2 ? Float(t) * 0.5 : 0)
            let zoom: Float = camera == 3 ? 1 + 0.01 * Float(t) : 1
            for y in 0..<size {
                for x in 0..<size {
                    let shade = 0.85 + 0.3 * Float(y) / S  // vertical gradient background
                    var p = (b.0 * shade, b.1 * shade, b.2 * shade)
                    // Coverage of the pixel by the shape from 4 x 4 sub-samples, so edges are
                    // anti-aliased as a camera's pixels (integrating over their area) would be.
                    var covered = 0
                    for sy in 0..<Self.subsamples {
                        for sx in 0..<Self.subsamples {
                            let fx = Float(x) + (Float(sx) + 0.5) / Float(Self.subsamples) - 0.5
                            let fy = Float(y) + (Float(sy) + 0.5) / Float(Self.subsamples) - 0.5
                            let u = (fx + pan - S / 2) / zoom + S / 2 - cx, v = (fy - S / 2) / zoom + S / 2 - cy
                            let inside: Bool
                            switch shape {
                            case 0: inside = abs(u) <= r && abs(v) <= r
                            case 1: inside = u * u + v * v <= r * r
                            default: inside = v <= r && v >= -r && abs(u) <= (v + r) / 2
                            }
                            if inside { covered += 1 }
                        }
                    }
                    let a = Float(covered) / Float(Self.subsamples * Self.subsamples)
                    p = (p.0 + a * (col.0 - p.0), p.1 + a * (col.1 - p.1), p.2 + a * (col.2 - p.2))
                    let o = (y * size + x) * 3
                    img[o] = min(max(p.0, 0), 1); img[o + 1] = min(max(p.1, 0), 1); img[o + 2] = min(max(p.2, 0), 1)
                }
            }
            out.append(img)
            cx += dx * speed
            cy += dy * speed
        }
        let c = Self.colors[color].name, s = Self.shapes[shape], d = Self.directions[direction]
        let caption = Caption(
            short_description: "a \(c) \(s) moving \(d)",
            dense_description: "A \(c) \(s) moves steadily to the \(d == "up" || d == "down" ? d + "ward" : d) across a \(Self.backgrounds[bgKind]) backdrop.",
            background: "\(Self.backgrounds[bgKind]) vertical gradient", style: "flat synthetic render",
            lighting: "even, shadowless", atmosphere: "calm", camera_movement: Self.cameras[camera])
        return Clip(frames: out, caption: caption, color: color, shape: shape, direction: direction, camera: camera)
    }
}
