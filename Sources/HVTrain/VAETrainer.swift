import Foundation
import HVComm
import HVData
import HVModel
import HVNN
import HVParallel
import HVTensor
import Yams

/// VAE training run (YAML): the causal 3D VAE on synthetic moving-shape clips, loss
/// L1 (or MSE, `train.recon_loss`) + kl_weight x KL (the paper's 1e-6). The paper's LPIPS (0.1)
/// and adversarial (0.05) terms are left out: they need a pretrained VGG and a discriminator.
public struct VAERunConfig: Codable, Sendable, Equatable {
    public var vae = VAEConfig()
    public var data = Data()
    public var train = Train()
    /// Checkpoints of launcher runs (`hv-coord launch`): every N steps, keep K.
    public var checkpoint = RunConfig.CheckpointConfig()

    public struct Data: Codable, Sendable, Equatable {
        public var size = 32
        public var frames = 9
        public var count = 512
        public var held_out = 16
        public var seed: UInt64 = 0
        public init() {}
    }

    public enum ReconstructionLoss: String, Codable, Sendable, Equatable { case l1, mse }

    public struct Train: Codable, Sendable, Equatable {
        public var steps = 500
        /// The global batch: every step draws `batch_size` clips and the data-parallel ranks
        /// take equal contiguous slices of it.
        public var batch_size = 2
        public var lr = 2e-3
        /// `constant` or `cosine` (to `min_lr_ratio * lr` at the last step), after `warmup_steps`.
        public var lr_schedule = LRSchedule.Kind.constant
        public var warmup_steps = 0
        public var min_lr_ratio = 0.1
        /// Global gradient-norm clip (0 = off).
        public var clip_grad = 1.0
        public var kl_weight = 1e-6
        /// Reconstruction loss: `l1` (the paper's) or `mse`. Without the paper's perceptual and
        /// adversarial terms, L1 stalls at "background only" even on a single clip (once most
        /// pixels are right their gradient signs flip from step to step and drown the shape's),
        /// where MSE, whose gradient fades as pixels become right, fits the shape (and 4 clips
        /// after ~475 steps, as PyTorch's VAE of the same config after ~330). On the full
        /// synthetic set MSE leaves the background-only plateau after ~6,000 steps (30.82 dB
        /// after 60,000 with `--init` continuations; BENCHMARKS.md, "Causal VAE").
        public var recon_loss = ReconstructionLoss.l1
        public var seed: UInt64 = 0
        public var log_every = 25
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Train()
            steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? d.steps
            batch_size = try c.decodeIfPresent(Int.self, forKey: .batch_size) ?? d.batch_size
            lr = try c.decodeIfPresent(Double.self, forKey: .lr) ?? d.lr
            lr_schedule = try c.decodeIfPresent(LRSchedule.Kind.self, forKey: .lr_schedule) ?? d.lr_schedule
            warmup_steps = try c.decodeIfPresent(Int.self, forKey: .warmup_steps) ?? d.warmup_steps
            min_lr_ratio = try c.decodeIfPresent(Double.self, forKey: .min_lr_ratio) ?? d.min_lr_ratio
            clip_grad = try c.decodeIfPresent(Double.self, forKey: .clip_grad) ?? d.clip_grad
            kl_weight = try c.decodeIfPresent(Double.self, forKey: .kl_weight) ?? d.kl_weight
            recon_loss = try c.decodeIfPresent(ReconstructionLoss.self, forKey: .recon_loss) ?? d.recon_loss
            seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? d.seed
            log_every = try c.decodeIfPresent(Int.self, forKey: .log_every) ?? d.log_every
        }
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vae = try c.decodeIfPresent(VAEConfig.self, forKey: .vae) ?? VAEConfig()
        data = try c.decodeIfPresent(Data.self, forKey: .data) ?? Data()
        train = try c.decodeIfPresent(Train.self, forKey: .train) ?? Train()
        checkpoint = try c.decodeIfPresent(RunConfig.CheckpointConfig.self, forKey: .checkpoint) ?? RunConfig.CheckpointConfig()
    }

    /// Whether the YAML file at `path` is a VAE run config (it has a top-level `vae:` section and
    /// no `model:`), which is how `hv-coord launch` tells VAE runs from DiT runs.
    public static func isVAERun(path: String) -> Bool {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let dict = (try? Yams.load(yaml: text)) as? [String: Any] else { return false }
        return dict["vae"] != nil && dict["model"] == nil
    }

    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: (try? enc.encode(self)) ?? Foundation.Data(), as: UTF8.self)
    }

    public var schedule: LRSchedule {
        LRSchedule(kind: train.lr_schedule, base: Float(train.lr), warmupSteps: train.warmup_steps, totalSteps: train.steps,
                   minRatio: Float(train.min_lr_ratio))
    }

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
            try c.validate(file: path)
            return c
        } catch let e as DecodingError { throw ConfigError.from(e, file: path) }
    }

    /// Checks every field a run reads (after command-line overrides too), naming the file and field.
    public func validate(file: String) throws {
        func fail(_ field: String, _ message: String) throws -> Never { throw ConfigError.invalid(file: file, field: field, message: message) }
        do { try vae.validate() } catch let DiTConfig.ValidationError.invalid(field, message) { try fail("vae.\(field)", message) }
        if data.frames < 1 || (data.frames - 1) % vae.temporal_compression != 0 { try fail("data.frames", "must be 1 + \(vae.temporal_compression)k") }
        if data.size < 1 || data.size % vae.spatial_compression != 0 { try fail("data.size", "must be a positive multiple of \(vae.spatial_compression)") }
        if data.count < 1 { try fail("data.count", "must be at least 1") }
        if data.held_out < 0 || data.held_out >= data.count { try fail("data.held_out", "must be at least 0 and less than data.count (\(data.count))") }
        if train.steps < 0 { try fail("train.steps", "must be at least 0") }
        if train.batch_size < 1 { try fail("train.batch_size", "must be at least 1") }
        if !(train.lr > 0) || !train.lr.isFinite { try fail("train.lr", "must be a positive number") }
        if train.warmup_steps < 0 { try fail("train.warmup_steps", "must be at least 0") }
        if !(0...1).contains(train.min_lr_ratio) { try fail("train.min_lr_ratio", "must be in [0, 1]") }
        if !(train.clip_grad >= 0) { try fail("train.clip_grad", "must be at least 0 (0 = no clipping)") }
        if !(train.kl_weight >= 0) || !train.kl_weight.isFinite { try fail("train.kl_weight", "must be a number at least 0") }
        if train.log_every < 1 { try fail("train.log_every", "must be at least 1") }
        if checkpoint.every < 0 { try fail("checkpoint.every", "must be at least 0") }
        if checkpoint.keep < 1 { try fail("checkpoint.keep", "must be at least 1") }
    }
}

public enum VAETrainerError: Error, CustomStringConvertible {
    case batchNotDivisible(batch: Int, world: Int)
    case zeroStage(Int)
    public var description: String {
        switch self {
        case .batchNotDivisible(let b, let w): "train.batch_size \(b) is not divisible by the \(w) data-parallel workers; use a multiple of \(w)"
        case .zeroStage(let s): "the VAE trains with ZeRO stage 0, 1 or 2, not \(s) (stage 3 needs per-block gather hooks the VAE does not have)"
        }
    }
}

/// Trains the causal VAE, alone (`SoloCommunicator`) or data parallel over a communicator: every
/// rank draws the same global batch of clip indices for a step (a function of train.seed and the
/// step), encodes and decodes its contiguous slice, and the ZeRO engine sums the gradients
/// (one bucket per unit, see `units`) and applies AdamW. Each sample's posterior noise comes from
/// its own stream (seed, step, position in the global batch), so the result does not depend on
/// the number of workers except through float summation order.
public final class VAETrainer {
    public let config: VAERunConfig
    public let vae: CausalVAE
    public let optimizer: AdamW
    public let engine: ZeroEngine
    public let comm: Communicator
    public let clips: SyntheticVideo
    public private(set) var step = 0

    public struct StepStats: Sendable {
        public var step: Int
        /// Global batch means.
        public var loss: Float, l1: Float, kl: Float
        public var gradNorm: Float
        public var lr: Float
        public var samples: Int
        public var seconds: Double
        public var commSeconds: Double
    }

    public init(config: VAERunConfig, comm: Communicator = SoloCommunicator(), zeroStage: Int = 0) throws {
        guard (0...2).contains(zeroStage) else { throw VAETrainerError.zeroStage(zeroStage) }
        guard config.train.batch_size % comm.worldSize == 0 else {
            throw VAETrainerError.batchNotDivisible(batch: config.train.batch_size, world: comm.worldSize)
        }
        self.config = config
        self.comm = comm
        vae = CausalVAE(config: config.vae, seed: config.train.seed)
        optimizer = AdamW(lr: Float(config.train.lr))
        engine = try ZeroEngine(stage: zeroStage, comm: comm, units: VAETrainer.units(vae), optimizer: optimizer)
        clips = SyntheticVideo(size: config.data.size, frames: config.data.frames, seed: config.data.seed)
    }

    /// Gradient buckets and checkpoint units: the VAE's parameters grouped by their first two
    /// path components (three under down_blocks / up_blocks), e.g. `encoder.down_blocks.0`,
    /// `encoder.mid_block`, `decoder.conv_out`, `quant_conv`, in parameter order.
    public static func units(_ vae: CausalVAE) -> [(String, [(String, Tensor)])] {
        var order: [String] = [], groups: [String: [(String, Tensor)]] = [:]
        for (name, t) in vae.namedParameters() {
            let parts = name.split(separator: ".")
            let n = parts.count > 2 && (parts[1] == "down_blocks" || parts[1] == "up_blocks") ? 3 : 2
            let key = parts.prefix(min(n, parts.count - 1)).joined(separator: ".")
            if groups[key] == nil { order.append(key); groups[key] = [] }
            groups[key]!.append((name, t))
        }
        return order.map { ($0, groups[$0]!) }
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

    /// The global batch of step `step`: training clip indices (the held-out ones excluded).
    public func globalIndices(step: Int) -> [Int] {
        var rng = HVRandom(seed: config.train.seed).split("vae-step").split(UInt64(step))
        let heldOut = config.data.held_out
        return (0..<config.train.batch_size).map { _ in heldOut + rng.int(below: config.data.count - heldOut) }
    }

    /// One optimizer step over the global batch; the returned losses are global batch means.
    public func trainStep() throws -> StepStats {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let B = config.train.batch_size, W = comm.worldSize, local = B / W
        let positions = Array((comm.rank * local)..<((comm.rank + 1) * local))
        let all = globalIndices(step: step)
        let x = batch(positions.map { all[$0] })
        comm.step = step
        // One micro-batch per step: buckets are reduced as backward finishes them.
        try engine.beginStep()
        try engine.beginMicroBatch(last: true)
        let (mean, logvar) = vae.encode(x)
        // Reparameterisation noise [local, C, t, h, w], sample by sample from its own stream.
        let noise = Tensor(uninitialized: mean.shape)
        let per = mean.count / local
        for (j, pos) in positions.enumerated() {
            var rng = HVRandom(seed: config.train.seed).split("vae-noise").split(UInt64(step)).split(UInt64(pos))
            for k in 0..<per { noise.pointer[j * per + k] = rng.normal() }
        }
        let z = mean + (logvar * 0.5).exp() * noise
        let recon = vae.decode(z)
        let l1 = config.train.recon_loss == .mse ? recon.mseLoss(x) : recon.l1Loss(x)  // in StepStats.l1 either way (train-vae logs it as MSE or L1)
        let kl = CausalVAE.kl(mean: mean, logvar: logvar)
        // Local means weighted by the slice's share of the global batch: the summed gradients
        // are those of the global batch mean.
        let share = Float(local) / Float(B)
        let loss = (l1 + kl * Float(config.train.kl_weight)) * share
        loss.backward()
        let lr = config.schedule.lr(at: step)
        let norm = try engine.finishStep(lr: lr, clip: Float(config.train.clip_grad))
        var totals = [loss.item, l1.item * share, kl.item * share]
        try totals.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: 3) }
        let s = step
        step += 1
        return StepStats(step: s, loss: totals[0], l1: totals[1], kl: totals[2], gradNorm: norm, lr: lr, samples: B,
                         seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9, commSeconds: engine.takeCommSeconds())
    }

    /// Sets the step after a checkpoint load (the data and noise are functions of the step).
    public func restore(step: Int) { self.step = step }

    /// Mean PSNR (dB, pixels in [0, 1]) of decode(mean) on the held-out clips; with several
    /// ranks each decodes every W-th clip and the sum is all-reduced (collective).
    public func heldOutPSNR(count: Int? = nil) throws -> Double {
        let n = min(count ?? config.data.held_out, config.data.held_out)
        var total = [Float](repeating: 0, count: 1)
        for i in stride(from: comm.rank, to: n, by: comm.worldSize) { total[0] += Float(psnr(clip: i)) }
        try total.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: 1) }
        return Double(total[0]) / Double(max(n, 1))
    }

    /// PSNR (dB) of one clip's reconstruction from its posterior mean.
    public func psnr(clip i: Int) -> Double {
        let x = batch([i])
        let y = GradMode.withoutGrad { vae.decode(vae.encode(x).mean) }
        var mse = 0.0
        for k in 0..<x.count {
            let a = Double(min(max((y.pointer[k] + 1) / 2, 0), 1)), b = Double((x.pointer[k] + 1) / 2)
            mse += (a - b) * (a - b)
        }
        mse /= Double(x.count)
        return 10 * log10(1 / max(mse, 1e-12))
    }
}
