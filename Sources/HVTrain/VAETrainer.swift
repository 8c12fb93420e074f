import Foundation
import HVData
import HVModel
import HVNN
import HVTensor
import Yams

/// VAE training run (YAML): the causal 3D VAE on synthetic moving-shape clips, loss
/// L1 + kl_weight x KL (the paper's 1e-6). The paper's LPIPS (0.1) and adversarial (0.05)
/// terms are left out: they need a pretrained VGG and a discriminator.
public struct VAERunConfig: Codable, Sendable, Equatable {
    public var vae = VAEConfig()
    public var data = Data()
    public var train = Train()

    public struct Data: Codable, Sendable, Equatable {
        public var size = 32
        public var frames = 9
        public var count = 512
        public var held_out = 16
        public var seed: UInt64 = 0
        public init() {}
    }

    public struct Train: Codable, Sendable, Equatable {
        public var steps = 500
        public var batch_size = 2
        public var lr = 2e-3
        public var kl_weight = 1e-6
        public var seed: UInt64 = 0
        public var log_every = 25
        public init() {}
    }

    public init() {}

    public static func load(path: String) throws -> VAERunConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError.unreadable(file: path, reason: error.localizedDescription)
        }
        guard var dict = try Yams.load(yaml: text) as? [String: Any] else { throw ConfigError.syntax(file: path, reason: "top level must be a mapping") }
        if let vaePath = dict["vae"] as? String {
            let dir = (path as NSString).deletingLastPathComponent
            let candidates = [(dir as NSString).appendingPathComponent(vaePath), vaePath]
            guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
                throw ConfigError.invalid(file: path, field: "vae", message: "VAE config '\(vaePath)' not found")
            }
            dict["vae"] = try Yams.load(yaml: try String(contentsOfFile: found, encoding: .utf8))
        }
        do {
            let c = try YAMLDecoder().decode(VAERunConfig.self, from: try Yams.dump(object: dict))
            try c.vae.validate()
            if (c.data.frames - 1) % c.vae.temporal_compression != 0 {
                throw ConfigError.invalid(file: path, field: "data.frames", message: "must be 1 + \(c.vae.temporal_compression)k")
            }
            if c.data.size % c.vae.spatial_compression != 0 {
                throw ConfigError.invalid(file: path, field: "data.size", message: "must be a multiple of \(c.vae.spatial_compression)")
            }
            return c
        } catch let e as DecodingError { throw ConfigError.from(e, file: path) }
        catch let DiTConfig.ValidationError.invalid(field, message) { throw ConfigError.invalid(file: path, field: "vae.\(field)", message: message) }
    }
}

public final class VAETrainer {
    public let config: VAERunConfig
    public let vae: CausalVAE
    public let optimizer: AdamW
    public let clips: SyntheticVideo
    public private(set) var step = 0

    public init(config: VAERunConfig) {
        self.config = config
        vae = CausalVAE(config: config.vae, seed: config.train.seed)
        optimizer = AdamW(lr: Float(config.train.lr))
        clips = SyntheticVideo(size: config.data.size, frames: config.data.frames, seed: config.data.seed)
    }

    /// Clips as a batch [B, 3, T, H, W] in [-1, 1].
    public func batch(_ indices: [Int]) -> Tensor {
        let S = config.data.size, T = config.data.frames
        let out = Tensor(uninitialized: [indices.count, 3, T, S, S])
        for (b, i) in indices.enumerated() {
            let clip = clips.clip(i)
            for t in 0..<T { for p in 0..<(S * S) { for c in 0..<3 {
                out.pointer[(((b * 3 + c) * T + t) * S * S) + p] = clip.frames[t][p * 3 + c] * 2 - 1
            }}}
        }
        return out
    }

    /// One optimizer step; returns (loss, L1, KL).
    public func trainStep() -> (Float, Float, Float) {
        let B = config.train.batch_size
        var rng = HVRandom(seed: config.train.seed).split("vae-step").split(UInt64(step))
        let heldOut = config.data.held_out
        let indices = (0..<B).map { _ in heldOut + rng.int(below: config.data.count - heldOut) }
        let x = batch(indices)
        let (mean, logvar) = vae.encode(x)
        let z = vae.sample(mean: mean, logvar: logvar, rng: &rng)
        let recon = vae.decode(z)
        let l1 = recon.l1Loss(x)
        let kl = CausalVAE.kl(mean: mean, logvar: logvar)
        let loss = l1 + kl * Float(config.train.kl_weight)
        loss.backward()
        let params = vae.namedParameters()
        clipGradNorm(params.map(\.1), maxNorm: 1)
        GradMode.withoutGrad { optimizer.update(params) }
        vae.zeroGrad()
        step += 1
        return (loss.item, l1.item, kl.item)
    }

    /// Mean PSNR (dB, pixels in [0, 1]) of decode(mean) on the held-out clips.
    public func heldOutPSNR(count: Int? = nil) -> Double {
        let n = min(count ?? config.data.held_out, config.data.held_out)
        var total = 0.0
        for i in 0..<n {
            let x = batch([i])
            let y = GradMode.withoutGrad { vae.decode(vae.encode(x).mean) }
            var mse = 0.0
            for k in 0..<x.count {
                let a = Double(min(max((y.pointer[k] + 1) / 2, 0), 1)), b = Double((x.pointer[k] + 1) / 2)
                mse += (a - b) * (a - b)
            }
            mse /= Double(x.count)
            total += 10 * log10(1 / max(mse, 1e-12))
        }
        return total / Double(max(n, 1))
    }
}
