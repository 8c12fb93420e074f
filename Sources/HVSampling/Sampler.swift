import Foundation
import HVCheckpoint
import HVData
import HVModel
import HVNN
import HVTensor
import HVTrain

/// Sampling settings; defaults follow the official sampler (REFERENCE.md).
public struct SamplingOptions: Sendable {
    public var steps = 50
    /// Time-step shift s: sigma' = s*sigma / (1 + (s-1)*sigma).
    public var shift = 7.0
    /// Classifier-free guidance scale (two passes when > 1).
    public var guidance = 1.0
    /// Embedded guidance for the CFG-distilled variant (fed x 1000).
    public var embeddedGuidance = 6.0
    public var seed: UInt64 = 0
    /// Latent frames x height x width.
    public var latentFrames = 3, latentHeight = 8, latentWidth = 8
    public init() {}

    /// Most latent values one sample may have (2^25; 1080p x 129 frames with 16 channels is 17.1M).
    public static let maxLatentValues = 1 << 25
    public static let maxSteps = 100_000

    /// What is wrong with these options for a model with `channels` latent channels (nil: nothing),
    /// naming hv-sample's option.
    public func problem(channels: Int) -> String? {
        if !(1...Self.maxSteps).contains(steps) { return "--steps \(steps) must be in 1...\(Self.maxSteps)" }
        if !(shift > 0) || !shift.isFinite { return "--shift \(shift) must be a positive number" }
        if !(guidance >= 1) || !guidance.isFinite { return "--guidance \(guidance) must be a number >= 1 (1 = no classifier-free guidance)" }
        if !embeddedGuidance.isFinite { return "--embedded-guidance \(embeddedGuidance) must be a finite number" }
        guard latentFrames >= 1, latentHeight >= 1, latentWidth >= 1 else {
            return "the latent size \(latentFrames) x \(latentHeight) x \(latentWidth) (frames x height x width) must be positive (--frames, --height, --width)"
        }
        guard let n = checkedShapeCount([max(channels, 1), latentFrames, latentHeight, latentWidth]), n <= Self.maxLatentValues else {
            return "the latent size \(latentFrames) x \(latentHeight) x \(latentWidth) is too large (more than \(Self.maxLatentValues) values; --frames, --height, --width)"
        }
        return nil
    }
}

public enum SamplingError: Error, CustomStringConvertible {
    case invalidOptions(String)
    public var description: String {
        switch self { case .invalidOptions(let m): "invalid sampling options: \(m)" }
    }
}

extension RunConfig {
    /// Sampling options from the run's `sample` section, at the training latent size.
    public var samplingDefaults: SamplingOptions {
        var o = SamplingOptions()
        o.steps = sample.steps; o.shift = sample.shift; o.guidance = sample.guidance
        o.latentFrames = data.frames; o.latentHeight = data.height; o.latentWidth = data.width
        return o
    }
}

/// A trained text-to-video model: DiT + text encoder (+ optional VAE), loaded from a
/// consolidated HDF5 file or a (sharded) checkpoint directory.
public final class TextToVideo {
    public let dit: HunyuanDiT
    public let textEncoder: HashTextEncoder
    public let run: RunConfig
    /// Context-parallel sampling (`hv-coord launch --sample`): with `dit.contextParallel` set,
    /// every rank computes the velocity of its share of the video tokens and this sum over the
    /// ranks (an all-reduce of zero-padded [B, N, P] buffers) assembles the whole velocity.
    public var contextParallelSum: ((UnsafeMutablePointer<Float>, Int) throws -> Void)?

    public init(dit: HunyuanDiT, textEncoder: HashTextEncoder, run: RunConfig) {
        self.dit = dit; self.textEncoder = textEncoder; self.run = run
    }

    /// The run config saved with the weights, decoded and validated (it sizes the model).
    static func savedRunConfig(_ json: String, file: String) throws -> RunConfig {
        let run: RunConfig
        do { run = try JSONDecoder().decode(RunConfig.self, from: Data(json.utf8)) } catch {
            throw CheckpointError.corrupt(file: file, detail: "run_config does not parse: \(error)")
        }
        try run.validate(file: "\(file) (run_config)")
        return run
    }

    /// Loads either a consolidated file (`hv-ckpt consolidate`) or a checkpoint / run directory.
    public static func load(_ path: String) throws -> TextToVideo {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CheckpointError.notFound("\(path): no such checkpoint or weights file")
        }
        let run: RunConfig
        var tensors: [String: Tensor] = [:]
        if isDir.boolValue {
            var dir = path
            if !FileManager.default.fileExists(atPath: dir + "/manifest.json") {
                let root = FileManager.default.fileExists(atPath: path + "/checkpoints/latest") ? path + "/checkpoints" : path
                guard let latest = try? String(contentsOfFile: root + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) else {
                    throw CheckpointError.notFound("\(path): not a checkpoint directory (no manifest.json, no checkpoints/latest)")
                }
                dir = root + "/" + latest
            }
            try Checkpointing.requireDiT(try CheckpointManifest.read(directory: dir), dir)
            let m = try Checkpointing.verify(dir)
            run = try Self.savedRunConfig(m.run_config, file: dir + "/manifest.json")
            let units = try Checkpointing.readUnits(dir, m)
            for u in m.units {
                let w = units[u.name]!.weights
                for t in u.tensors {
                    let n = t.shape.reduce(1, *)
                    tensors[t.name] = Tensor(Array(w[t.offset..<(t.offset + n)]), shape: t.shape)
                }
            }
        } else {
            let f = try H5File(path: path, mode: .readOnly)
            defer { try? f.close() }
            guard try f.hasAttribute("run_config") else {
                throw CheckpointError.corrupt(file: path, detail: "no run_config attribute: make it with `hv-ckpt consolidate`")
            }
            run = try Self.savedRunConfig(try f.stringAttribute("run_config"), file: path)
            for name in try f.children() where (try? f.kind(of: name)) == .dataset { tensors[name] = try TensorIO.read(f, name: name) }
        }
        let dit = HunyuanDiT(config: run.model, seed: 0)
        let te = HashTextEncoder(vocabularySize: run.text_encoder.vocab_size, maxTokens: run.text_encoder.max_tokens,
                                 stateDim: run.model.text_states_dim, pooledDim: run.model.text_states_dim_2, seed: 0)
        for (name, p) in dit.namedParameters() + te.trainableParameters() {
            guard let t = tensors[name] else { throw WeightsError.missing(file: path, names: [name]) }
            guard t.shape == p.shape else { throw WeightsError.shapeMismatch(file: path, name: name, expected: p.shape, found: t.shape) }
            p.assign(t)
        }
        return TextToVideo(dit: dit, textEncoder: te, run: run)
    }

    /// Euler flow-matching sampling from noise (sigma = 1) to data (sigma = 0) with the shift,
    /// CFG against `negativePrompt` when guidance > 1, and embedded guidance for distilled models.
    /// `progress(step, total)` is called after every step.
    public func sampleLatents(prompt: String, negativePrompt: String = "", options o: SamplingOptions,
                              progress: (Int, Int) -> Void = { _, _ in }) throws -> Tensor {
        if let problem = o.problem(channels: dit.config.in_channels) { throw SamplingError.invalidOptions(problem) }
        return try GradMode.withoutGrad {
            let c = dit.config
            var rng = HVRandom(seed: o.seed).split("sample-noise")
            var x = Tensor.randn([1, c.in_channels, o.latentFrames, o.latentHeight, o.latentWidth], rng: &rng)
            let pos = textEncoder.encode([prompt])
            let neg = o.guidance > 1 ? textEncoder.encode([negativePrompt]) : nil
            let sigmas = FlowMatching.samplingSigmas(steps: o.steps, shift: o.shift)
            let g: [Float]? = c.guidance_embed ? [Float(o.embeddedGuidance * 1000)] : nil
            for i in 0..<o.steps {
                let t = [Float(sigmas[i] * 1000)]
                var v = try velocity(DiTInputs(x: x, t: t, text_states: pos.states, text_mask: pos.mask, text_states_2: pos.pooled, guidance: g))
                if let neg {
                    let vn = try velocity(DiTInputs(x: x, t: t, text_states: neg.states, text_mask: neg.mask, text_states_2: neg.pooled, guidance: g))
                    v = vn + (v - vn) * Float(o.guidance)
                }
                x = x + v * Float(sigmas[i + 1] - sigmas[i])
                progress(i + 1, o.steps)
            }
            return x
        }
    }

    /// The DiT's velocity [B, C, T, H, W]; with context parallelism, this rank's video tokens
    /// written into a zero buffer and summed over the ranks (adding zeros is exact, so every
    /// rank gets the same bits).
    func velocity(_ inputs: DiTInputs) throws -> Tensor {
        guard let cp = dit.contextParallel, let contextParallelSum else { return dit(inputs) }
        let local = dit.forwardTokens(inputs).contiguous()                         // [B, n, P]
        try cp.takeFailure()
        let grid = dit.tokenGrid(inputs.x.shape)
        let B = local.shape[0], n = local.shape[1], P = local.shape[2], N = grid.t * grid.h * grid.w
        let mine = cp.videoTokenRange(N)
        precondition(mine.count == n, "context-parallel forward returned \(n) tokens, expected \(mine.count) of \(N)")
        let full = Tensor(zeros: [B, N, P])
        for b in 0..<B {
            (full.pointer + (b * N + mine.lowerBound) * P).update(from: local.pointer + b * n * P, count: n * P)
        }
        try contextParallelSum(full.pointer, full.count)
        return dit.unpatchify(full, grid: grid)
    }
}

/// Renders latents of the synthetic latent world (`SyntheticLatents`) as RGB frames, the
/// decoder for models trained on synthetic latents before a VAE is in the loop: per frame, the
/// palette colour with the largest total projection is the clip's colour, and each latent pixel
/// is painted in it with an intensity proportional to its projection (relative to the frame's
/// strongest pixel) over a neutral gray; `scale` x nearest up-sampling.
public enum LatentPreview {
    public static let rgb: [(Float, Float, Float)] = [(230, 30, 30), (30, 200, 50), (40, 60, 240), (240, 230, 30), (150, 40, 200), (30, 220, 230)]

    /// latents [1, C, T, H, W] -> T frames of (H*scale) x (W*scale) RGB24.
    public static func frames(_ z: Tensor, channels: Int, scale: Int = 8) -> [[UInt8]] {
        let palette = SyntheticLatents.palette(channels: channels)
        let T = z.shape[2], H = z.shape[3], W = z.shape[4]
        let zc = z.contiguous()
        let norm2 = palette.map { $0.map { $0 * $0 }.reduce(0, +) }
        var out: [[UInt8]] = []
        for t in 0..<T {
            // score[k][p]: projection of latent pixel p on colour k (1 = fully that colour).
            var scores = [[Float]](repeating: [Float](repeating: 0, count: H * W), count: palette.count)
            for (k, col) in palette.enumerated() {
                for p in 0..<(H * W) {
                    var dot: Float = 0
                    for ch in 0..<channels { dot += zc.pointer[(ch * T + t) * H * W + p] * col[ch] }
                    scores[k][p] = dot / norm2[k]
                }
            }
            let totals = scores.map { $0.map { max($0, 0) }.reduce(0, +) }
            let k = totals.indices.max { totals[$0] < totals[$1] }!
            let peak = max(scores[k].max() ?? 0, 1e-6)
            var img = [UInt8](repeating: 0, count: H * scale * W * scale * 3)
            for y in 0..<H {
                for x in 0..<W {
                    let a = min(max(scores[k][y * W + x] / peak, 0), 1)
                    let a2 = a > 0.5 ? a : 0  // below half of the peak: background
                    let c = rgb[k]
                    let px = [UInt8(128 + (c.0 - 128) * a2), UInt8(128 + (c.1 - 128) * a2), UInt8(128 + (c.2 - 128) * a2)]
                    for dy in 0..<scale { for dx in 0..<scale {
                        let o = (((y * scale + dy) * W * scale) + x * scale + dx) * 3
                        img[o] = px[0]; img[o + 1] = px[1]; img[o + 2] = px[2]
                    }}
                }
            }
            out.append(img)
        }
        return out
    }
}

/// Reads a clip back and judges it: the dominant non-gray colour (nearest palette colour) and
/// the motion direction of its centroid from the first to the last frame.
public enum PromptChecker {
    public static func judge(frames: [[UInt8]], width: Int, height: Int) -> (color: Int?, direction: Int?) {
        var centroids: [(Double, Double)] = []
        var sum = (0.0, 0.0, 0.0), n = 0.0
        for f in frames {
            var cx = 0.0, cy = 0.0, w = 0.0
            for y in 0..<height { for x in 0..<width {
                let o = (y * width + x) * 3
                let r = Double(f[o]), g = Double(f[o + 1]), b = Double(f[o + 2])
                let sat = max(r, g, b) - min(r, g, b)
                if sat > 60 { cx += Double(x) * sat; cy += Double(y) * sat; w += sat; sum.0 += r; sum.1 += g; sum.2 += b; n += 1 }
            }}
            if w > 0 { centroids.append((cx / w, cy / w)) }
        }
        guard n > 0, let first = centroids.first, let last = centroids.last else { return (nil, nil) }
        let mean = (sum.0 / n, sum.1 / n, sum.2 / n)
        let color = LatentPreview.rgb.indices.min { a, b in
            func d(_ c: (Float, Float, Float)) -> Double { pow(Double(c.0) - mean.0, 2) + pow(Double(c.1) - mean.1, 2) + pow(Double(c.2) - mean.2, 2) }
            return d(LatentPreview.rgb[a]) < d(LatentPreview.rgb[b])
        }
        let dx = last.0 - first.0, dy = last.1 - first.1
        let direction: Int? = max(abs(dx), abs(dy)) < 1 ? nil : (abs(dx) > abs(dy) ? (dx < 0 ? 0 : 1) : (dy < 0 ? 2 : 3))
        return (color, direction)
    }
}

/// Writes frames as H.264 mp4 (yuv420p) and a PNG contact sheet (frames side by side). The
/// encoder runs in its deterministic configuration (`VideoWriter.Options.deterministic`: one
/// thread, x264's C code, bit-exact muxing) so the same frames give the same bytes on any machine.
public func writeVideo(_ frames: [[UInt8]], width: Int, height: Int, fps: Double, mp4: String, contactSheet: String?,
                       options: VideoWriter.Options = .deterministic(crf: 12)) throws {
    let opts = options
    let w = try VideoWriter(path: mp4, width: width, height: height, fps: fps, options: opts)
    for f in frames { try w.append(rgb: f) }
    try w.finish()
    if let contactSheet {
        let n = frames.count
        var sheet = [UInt8](repeating: 0, count: n * width * height * 3)
        for (i, f) in frames.enumerated() {
            for y in 0..<height {
                let src = y * width * 3, dst = (y * n * width + i * width) * 3
                sheet.replaceSubrange(dst..<(dst + width * 3), with: f[src..<(src + width * 3)])
            }
        }
        try PNGWriter.write(rgb: sheet, width: n * width, height: height, to: contactSheet)
    }
}
