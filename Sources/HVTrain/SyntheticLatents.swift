import Foundation
import HVTensor

/// A learnable, checkable text-to-video set in latent space: one coloured shape per clip moving
/// `speed` latent pixels per frame in a direction, captioned "a red square moving left".
/// A colour is a fixed direction in channel space (the six are orthogonal, so colours neither
/// blend into each other in the model's targets nor in the renderer's projections); a shape is a
/// hard square or a soft blob. Sample i is a pure function of (seed, i).
public struct SyntheticLatents: Sendable {
    public static let colors = ["red", "green", "blue", "yellow", "purple", "cyan"]
    public static let shapes = ["square", "blob"]
    public static let directions = ["left", "right", "up", "down"]

    public let count: Int, channels: Int, frames: Int, height: Int, width: Int
    public let seed: UInt64
    /// Side of the shape in latent pixels.
    public let objectSize: Int
    /// false: the shape's path is centred in the frame, so colour, shape and direction (the
    /// caption) determine the clip up to the background; true: it starts anywhere it fits.
    public let randomStart: Bool
    /// Latent pixels moved per frame.
    public let speed: Int
    /// [colors.count][channels] unit channel directions.
    public let palette: [[Float]]

    /// `objectSize` 0: a third of the smaller side (at least 2).
    public init(count: Int, channels: Int, frames: Int, height: Int, width: Int, seed: UInt64, objectSize: Int = 0,
                randomStart: Bool = true, speed: Int = 1) {
        self.count = count; self.channels = channels; self.frames = frames; self.height = height; self.width = width
        self.seed = seed
        self.randomStart = randomStart
        self.speed = max(1, speed)
        self.objectSize = objectSize > 0 ? objectSize : max(2, min(height, width) / 3)
        palette = SyntheticLatents.palette(channels: channels)
    }

    /// Unit random directions in channel space, Gram-Schmidt orthogonalised while there are
    /// channels to spare, scaled to norm 0.8 sqrt(C). The same for every dataset seed.
    public static func palette(channels: Int) -> [[Float]] {
        var rng = HVRandom(seed: 0x5EED).split("palette")
        var out: [[Float]] = []
        for _ in colors {
            var v = (0..<channels).map { _ in rng.normal() }
            if out.count < channels {
                for u in out {
                    let d = zip(u, v).map { $0 * $1 }.reduce(0, +) / u.map { $0 * $0 }.reduce(0, +)
                    v = zip(v, u).map { $0 - d * $1 }
                }
            }
            let n = v.map { $0 * $0 }.reduce(0, +).squareRoot()
            out.append(v.map { $0 / n * Float(channels).squareRoot() * 0.8 })
        }
        return out
    }

    public struct Item: Sendable {
        public var latent: Tensor   // [C, T, H, W]
        public var caption: String
        public var color: Int, shape: Int, direction: Int
    }

    /// Sample `index` with `frames` frames (1 for an image sample).
    public func item(_ index: Int, frames T: Int? = nil) -> Item {
        let T = T ?? frames
        var rng = HVRandom(seed: seed).split("synthetic-item").split(UInt64(index))
        let color = rng.int(below: SyntheticLatents.colors.count)
        let shape = rng.int(below: SyntheticLatents.shapes.count)
        let direction = rng.int(below: SyntheticLatents.directions.count)
        let size = objectSize
        let (dx, dy): (Int, Int) = [(-speed, 0), (speed, 0), (0, -speed), (0, speed)][direction]
        // Start so that the shape stays inside the frame when possible.
        func start(_ extent: Int, _ d: Int) -> Int {
            let travel = (T - 1) * abs(d)
            let room = max(0, extent - size - travel)
            let s = randomStart ? rng.int(below: room + 1) : room / 2
            return d < 0 ? s + travel : s
        }
        let x0 = start(width, dx), y0 = start(height, dy)
        let latent = Tensor(zeros: [channels, T, height, width])
        let background = (0..<channels).map { _ in 0.1 * rng.normal() }
        let col = palette[color]
        let center = Float(size - 1) / 2
        for t in 0..<T {
            let ox = x0 + dx * t, oy = y0 + dy * t
            for y in 0..<height {
                for x in 0..<width {
                    var a: Float = 0
                    let u = Float(x - ox) - center, v = Float(y - oy) - center
                    if shape == 0 {
                        a = (abs(u) <= center + 0.01 && abs(v) <= center + 0.01) ? 1 : 0
                    } else {
                        // Gaussian of std size/2: about 0.8 on the central pixels, fading outside.
                        let sd = Float(size) / 2
                        a = Foundation.exp(-0.5 * (u * u + v * v) / (sd * sd))
                    }
                    for c in 0..<channels {
                        latent.pointer[((c * T + t) * height + y) * width + x] = background[c] + a * col[c]
                    }
                }
            }
        }
        let caption = "a \(SyntheticLatents.colors[color]) \(SyntheticLatents.shapes[shape]) moving \(SyntheticLatents.directions[direction])"
        return Item(latent: latent, caption: caption, color: color, shape: shape, direction: direction)
    }

    /// Stacks items into a batch [B, C, T, H, W].
    public func batch(_ indices: [Int], frames T: Int? = nil) -> (latents: Tensor, captions: [String]) {
        let items = indices.map { item($0, frames: T) }
        let x = Tensor.concat(items.map { $0.latent.unsqueeze(0) }, axis: 0)
        return (x, items.map(\.caption))
    }
}

/// Epoch-based shuffled order over `count` samples, a pure function of (seed, epoch): the
/// position (epoch, offset) is all a checkpoint needs to resume the exact same order.
public struct DataOrder: Sendable, Equatable, Codable {
    public let count: Int, seed: UInt64
    public private(set) var epoch = 0
    public private(set) var offset = 0

    public init(count: Int, seed: UInt64, epoch: Int = 0, offset: Int = 0) {
        self.count = count; self.seed = seed; self.epoch = epoch; self.offset = offset
    }

    func permutation(_ e: Int) -> [Int] {
        var rng = HVRandom(seed: seed).split("data-order").split(UInt64(e))
        return rng.permutation(count)
    }

    /// The next `n` sample indices (crossing epochs as needed).
    public mutating func next(_ n: Int) -> [Int] {
        var out: [Int] = []
        var perm = permutation(epoch)
        while out.count < n {
            if offset == count { epoch += 1; offset = 0; perm = permutation(epoch) }
            let take = min(n - out.count, count - offset)
            out += perm[offset..<(offset + take)]
            offset += take
        }
        return out
    }
}
