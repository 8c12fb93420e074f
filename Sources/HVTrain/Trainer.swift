import Foundation
import HVComm
import HVModel
import HVParallel
import HVNN
import HVTensor

/// Flow-matching training of the DiT (and the stand-in text encoder) in one process.
///
/// Every random draw is a pure function of (seed, step, global sample index) — noise, sigma,
/// guidance — and the data order is a pure function of (data seed, epoch), so a run resumed
/// from (step, data position, parameters, optimizer state) continues bit for bit, and a
/// data-parallel run that splits the same global batch computes the same update.
public final class Trainer {
    public let config: RunConfig
    public let model: HunyuanDiT
    public let textEncoder: HashTextEncoder
    public let optimizer: AdamW
    /// Data parallelism with ZeRO (a one-rank engine when training alone): over all ranks, or
    /// under pipeline parallelism over this stage's ranks with this stage's units only.
    public let engine: ZeroEngine
    public let comm: Communicator
    /// dp x cp x pp layout of the ranks (`train.context_parallel`, `train.pipeline_parallel`).
    public let mesh: DeviceMesh
    /// Pipeline parallelism: this replica's stages as a group (one rank per stage, same cp rank)
    /// and the blocks of each stage (nil when pipeline_parallel is 1).
    public let pipeline: (group: PointToPointGroup, partition: PipelinePartition)?
    /// The current stage's data (see RunConfig.stages): synthetic latents, or the latent cache
    /// when its kind is latent-cache (then `order` runs over batch slots).
    public private(set) var dataset: SyntheticLatents
    public private(set) var cache: LatentCache?
    public private(set) var data: RunConfig.DataConfig
    /// Global batch size of the current stage.
    public private(set) var batchSize: Int
    public private(set) var stage = 0
    public var order: DataOrder
    private var plan: (epoch: Int, batches: [[Int]])?
    public private(set) var step = 0
    public private(set) var samplesSeen = 0

    public struct StepStats: Sendable {
        public var step: Int
        public var loss: Float
        public var gradNorm: Float
        public var lr: Float
        public var samples: Int
        public var videoTokens: Int
        public var seconds: Double
        public var commSeconds: Double
        /// Pipeline parallelism: seconds all ranks spent waiting for activations or gradients
        /// over the seconds all ranks spent in the 1F1B schedule (the measured bubble fraction).
        public var pipelineIdleSeconds = 0.0, pipelineSeconds = 0.0
    }

    public enum SetupError: Error, CustomStringConvertible {
        case batchNotDivisible(batch: Int, world: Int, accum: Int)
        case tooFewVideoTokens(tokens: Int, cp: Int)
        case cacheMismatch(LatentCacheError)
        case pipelineBatchNotDivisible(batch: Int, dp: Int, microBatches: Int)
        public var description: String {
            switch self {
            case .pipelineBatchNotDivisible(let b, let dp, let m):
                "batch size \(b) must be divisible by data-parallel replicas (\(dp) = workers / (context_parallel x pipeline_parallel)) x train.micro_batches (\(m))"
            case .tooFewVideoTokens(let n, let cp):
                "a batch has \(n) video tokens, fewer than train.context_parallel \(cp): every context-parallel rank needs at least one"
            case .cacheMismatch(let e): "\(e)"
            case .batchNotDivisible(let b, let w, let a):
                "train.batch_size \(b) must be divisible by data-parallel replicas (\(w) = workers / context_parallel) x grad_accum (\(a)) so every rank gets equal micro-batches"
            }
        }
    }

    public enum TrainingError: Error, CustomStringConvertible {
        case nonFiniteLoss(step: Int, loss: Float)
        /// Part of the description the launcher looks for (a restart would fail the same way).
        public static let nonFiniteMarker = "training stopped (the weights after this step are not saved"
        public var description: String {
            switch self {
            case .nonFiniteLoss(let s, let l):
                "the loss of step \(s) is \(l): \(Self.nonFiniteMarker); the latest checkpoint is untouched). Check the data for non-finite values, or lower train.lr"
            }
        }
    }

    /// `comm` connects the data-parallel ranks; `zeroStage` 0-3 chooses what is sharded.
    public init(config: RunConfig, comm: Communicator = SoloCommunicator(), zeroStage: Int = 0) throws {
        // Process-wide: a worker runs one trainer.
        try MatmulPrecision.select(MatmulPrecision(rawValue: config.train.precision) ?? .fp32)
        let mesh = try DeviceMesh(world: comm.worldSize, cp: config.train.context_parallel, pp: config.train.pipeline_parallel, rank: comm.rank)
        for i in config.stageRanges.indices {
            let b = config.stageData(i).batchSize
            guard b % (mesh.dp * config.train.grad_accum) == 0 else {
                throw SetupError.batchNotDivisible(batch: b, world: mesh.dp, accum: config.train.grad_accum)
            }
            if mesh.pp > 1, b % (mesh.dp * config.train.micro_batches) != 0 {
                throw SetupError.pipelineBatchNotDivisible(batch: b, dp: mesh.dp, microBatches: config.train.micro_batches)
            }
        }
        var partition: PipelinePartition? = nil
        if mesh.pp > 1 {
            partition = try PipelinePartition(config: config.model, stages: mesh.pp,
                                              videoTokens: config.model.videoTokens(latentT: config.data.frames, latentH: config.data.height, latentW: config.data.width),
                                              textTokens: config.text_encoder.max_tokens)
        }
        self.mesh = mesh
        self.comm = comm
        self.config = config
        // A pipeline stage allocates only the parts it runs (the others keep names and shapes).
        model = HunyuanDiT(config: config.model, seed: config.train.seed, holding: { partition?.holds($0, stage: mesh.ppRank) ?? true })
        model.recomputeBlocks = config.train.recompute
        if mesh.cp > 1 {
            let smallest = config.model.videoTokens(latentT: config.data.image_ratio > 0 ? 1 : config.data.frames,
                                                    latentH: config.data.height, latentW: config.data.width)
            guard smallest >= mesh.cp else { throw SetupError.tooFewVideoTokens(tokens: smallest, cp: mesh.cp) }
            model.contextParallel = ContextParallelAttention(group: PointToPointGroup(parent: comm, members: mesh.cpGroup))
        }
        textEncoder = HashTextEncoder(vocabularySize: config.text_encoder.vocab_size, maxTokens: config.text_encoder.max_tokens,
                                      stateDim: config.model.text_states_dim, pooledDim: config.model.text_states_dim_2,
                                      seed: config.train.seed)
        // Only the first stage encodes text: later stages need just the mask (from the ids).
        if mesh.ppRank > 0 { for (_, p) in textEncoder.trainableParameters() { p.release() } }
        let t = config.train
        optimizer = AdamW(lr: Float(t.lr), beta1: Float(t.beta1), beta2: Float(t.beta2), weightDecay: Float(t.weight_decay))
        let first = try Trainer.makeData(config, stage: 0)
        // Every later stage's cache is opened and checked now, not after the stages before it trained.
        for i in config.stages.indices.dropFirst() where config.stages[i].data.kind == "latent-cache" { _ = try Trainer.makeData(config, stage: i) }
        dataset = first.0
        cache = first.1
        order = first.2
        data = config.stageData(0).data
        batchSize = config.stageData(0).batchSize
        if let partition {
            // The stage's units, sharded over the stage's ranks; gradient norms add up over the stages.
            let units = partition.units(stage: mesh.ppRank, of: ZeroEngine.units(of: model, extraOuter: textEncoder.trainableParameters()))
            let stageEngine = try ZeroEngine(stage: zeroStage, comm: PointToPointGroup(parent: comm, members: mesh.stageGroup), units: units,
                                             optimizer: optimizer)
            let stages = PointToPointGroup(parent: comm, members: mesh.ppGroup)
            stageEngine.normGroup = stages
            stageEngine.drive(model)
            engine = stageEngine
            pipeline = (stages, partition)
        } else {
            engine = try ZeroEngine(stage: zeroStage, comm: comm, model: model, extraOuter: textEncoder.trainableParameters(),
                                    optimizer: optimizer)
            pipeline = nil
        }
    }

    /// Every ZeRO unit of the model with the world ranks it is sharded over (a checkpoint's
    /// layout): the engine's units over all ranks, or each pipeline stage's units over that
    /// stage's ranks.
    public var unitPlacement: [(name: String, params: [(String, Tensor)], ranks: [Int])] {
        guard let pipeline else { return engine.units.map { ($0.name, $0.params, Array(0..<comm.worldSize)) } }
        let all = ZeroEngine.units(of: model, extraOuter: textEncoder.trainableParameters())
        return (0..<mesh.pp).flatMap { s in pipeline.partition.units(stage: s, of: all).map { ($0.0, $0.1, mesh.ranks(ofStage: s)) } }
    }

    /// The data source and a fresh order for stage `i`.
    static func makeData(_ config: RunConfig, stage i: Int) throws -> (SyntheticLatents, LatentCache?, DataOrder) {
        let (d, B) = config.stageData(i)
        let dataset = SyntheticLatents(count: d.count, channels: config.model.in_channels, frames: d.frames, height: d.height,
                                       width: d.width, seed: d.seed, objectSize: d.object_size, randomStart: d.random_start, speed: d.speed)
        guard d.kind == "latent-cache" else { return (dataset, nil, DataOrder(count: d.count, seed: d.seed)) }
        let c = try LatentCache(directory: d.path)
        func mismatch(_ field: String, _ m: String) -> SetupError { .cacheMismatch(.mismatch(directory: d.path, field: field, message: m)) }
        if c.index.vae_config.latent_channels != config.model.in_channels {
            throw mismatch("model.in_channels", "the cache holds \(c.index.vae_config.latent_channels)-channel latents, the DiT takes \(config.model.in_channels)")
        }
        if c.index.vocab_size != config.text_encoder.vocab_size || c.index.max_tokens != config.text_encoder.max_tokens {
            throw mismatch("text_encoder", "captions were tokenised with vocab_size \(c.index.vocab_size), max_tokens \(c.index.max_tokens); the run has \(config.text_encoder.vocab_size), \(config.text_encoder.max_tokens) (re-encode with matching --vocab-size/--max-tokens or change the run)")
        }
        let p = config.model.patch_size
        if let bad = c.buckets.first(where: { $0.shape[1] % p[0] != 0 || $0.shape[2] % p[1] != 0 || $0.shape[3] % p[2] != 0 }) {
            throw mismatch("model.patch_size", "latent shape \(bad.shape) (C, T, H, W) is not divisible by the patch \(p)")
        }
        return (dataset, c, DataOrder(count: c.slotsPerEpoch(batchSize: B), seed: d.seed))
    }

    /// Switches to stage `i`'s data with a fresh data order.
    func enterStage(_ i: Int) throws {
        guard i != stage else { return }
        (dataset, cache, order) = try Trainer.makeData(config, stage: i)
        (data, batchSize) = config.stageData(i)
        plan = nil
        stage = i
    }

    /// Whether `step` ends a stage that is not the last (the worker checkpoints there).
    public func endsStage(_ step: Int) -> Bool {
        config.stageRanges.dropLast().contains { $0.upperBound == step }
    }

    /// Every trainable tensor with its checkpoint name: the DiT's official names, then
    /// `text_encoder.*` (on a pipeline stage, those of other stages are released: shapes only).
    public lazy var parameters: [(String, Tensor)] = model.namedParameters() + textEncoder.trainableParameters()

    public var schedule: LRSchedule {
        let t = config.train
        return LRSchedule(kind: t.schedule, base: Float(t.lr), warmupSteps: t.warmup_steps, totalSteps: t.steps, minRatio: Float(t.min_lr_ratio))
    }

    /// Latent frames for `step`'s batch: 1 (an image batch) with probability `image_ratio`.
    public func frames(forStep s: Int) -> Int {
        guard data.image_ratio > 0 else { return data.frames }
        var rng = HVRandom(seed: config.train.seed).split("batch-kind").split(UInt64(s))
        return rng.uniformDouble() < data.image_ratio ? 1 : data.frames
    }

    /// Forward + backward on the samples at `positions` (indices within the global batch of
    /// `step`), accumulating gradients of (loss x positions.count / batch_size) into `.grad`.
    /// Returns the mean loss over these samples.
    @discardableResult
    public func accumulateGradients(sampleIndices: [Int], positions: [Int], step s: Int, frames T: Int) throws -> Float {
        let (x0, captions) = dataset.batch(sampleIndices, frames: T)
        let dropped = captionDropout(positions: positions, step: s)
        return try accumulateGradients(x0: x0, text: textEncoder.encode(zip(captions, dropped).map { $1 ? "" : $0 }), positions: positions, step: s)
    }

    /// Which samples of `positions` train with the empty prompt (flow.caption_dropout), drawn on
    /// their own random stream so that runs without dropout draw exactly as before.
    func captionDropout(positions: [Int], step s: Int) -> [Bool] {
        let rate = config.flow.caption_dropout
        return positions.map { p in
            guard rate > 0 else { return false }
            var rng = HVRandom(seed: config.train.seed).split("caption-dropout").split(UInt64(s)).split(UInt64(p))
            return rng.uniformDouble() < rate
        }
    }

    /// The same on given latents x0 [B, C, T, H, W] and encoded text.
    @discardableResult
    func accumulateGradients(x0: Tensor, text: (states: Tensor, mask: Tensor, pooled: Tensor), positions: [Int], step s: Int) throws -> Float {
        let B = x0.shape[0]
        let (inputs, target) = makeInputs((x0, text), positions: positions, step: s)
        let g = model.tokenGrid(x0.shape), N = g.t * g.h * g.w
        let loss = velocityLoss(model.forwardTokens(inputs), target: target, tokens: model.contextParallel?.videoTokenRange(N) ?? 0..<N)
        (loss * (Float(B) / Float(batchSize))).backward()
        try model.contextParallel?.takeFailure()
        return loss.item
    }

    /// This rank's share of the loss of predicted velocity tokens `pred` [B, n, P] for its video
    /// tokens `mine` of the target's N: the MSE; under context parallelism the MSE over its
    /// tokens x n / N, so the cp ranks' shares sum to the MSE.
    func velocityLoss(_ pred: Tensor, target: Tensor, tokens mine: Range<Int>) -> Tensor {
        let g = model.tokenGrid(target.shape)
        if mine.count == g.t * g.h * g.w { return model.unpatchify(pred, grid: g).mseLoss(target) }
        let tokens = model.patchify(target)                                         // [B, N, P]
        return pred.mseLoss(tokens.slice(axis: 1, start: mine.lowerBound, length: mine.count)) * (Float(mine.count) / Float(tokens.shape[1]))
    }

    /// The latents x0 [B, C, T, H, W] and caption token ids (caption dropout applied: the empty
    /// prompt's ids) of the samples at `positions` of `step`'s global batch, from the stage's
    /// synthetic data or latent cache.
    func microBatch(indices: [Int], positions pos: [Int], step s: Int, frames T: Int) throws -> (x0: Tensor, tokens: [[Int]]) {
        let dropped = captionDropout(positions: pos, step: s), empty = textEncoder.tokenizer.encode("").ids
        if let cache {
            let (x0, tokens, _) = try cache.batch(pos.map { indices[$0] })
            return (x0, zip(tokens, dropped).map { $1 ? empty : $0 })
        }
        let (x0, captions) = dataset.batch(pos.map { indices[$0] }, frames: T)
        return (x0, zip(captions, dropped).map { $1 ? empty : textEncoder.tokenizer.encode($0).ids })
    }

    /// The DiT inputs and velocity target [B, C, T, H, W] for latents x0 and encoded text.
    func makeInputs(_ batch: (x0: Tensor, text: (states: Tensor, mask: Tensor, pooled: Tensor)), positions: [Int], step s: Int) -> (DiTInputs, Tensor) {
        let f = flowSample(x0: batch.x0, positions: positions, step: s), text = batch.text
        let inputs = DiTInputs(x: f.xt, t: f.t, text_states: text.states, text_mask: text.mask,
                               text_states_2: text.pooled, guidance: config.model.guidance_embed ? f.guidance : nil)
        return (inputs, f.target)
    }

    /// Noised latents x_t, velocity target [B, C, T, H, W], timesteps (sigma x 1000) and guidance
    /// (x 1000) for latents x0: noise, sigma and guidance are drawn per sample, keyed by (seed,
    /// step, position in the global batch).
    func flowSample(x0: Tensor, positions: [Int], step s: Int) -> (xt: Tensor, target: Tensor, t: [Float], guidance: [Float]) {
        let cfg = config
        var noiseParts: [Tensor] = [], sigmas: [Float] = [], guidance: [Float] = []
        let perSample = Array(x0.shape.dropFirst())
        for p in positions {
            var rng = HVRandom(seed: cfg.train.seed).split("flow").split(UInt64(s)).split(UInt64(p))
            sigmas += FlowMatching.sampleSigmas(1, logitNormal: cfg.flow.logit_normal, shift: cfg.flow.time_shift, rng: &rng)
            guidance.append(Float(cfg.flow.guidance_min + (cfg.flow.guidance_max - cfg.flow.guidance_min) * rng.uniformDouble()) * 1000)
            noiseParts.append(Tensor.randn([1] + perSample, rng: &rng))
        }
        let noise = Tensor.concat(noiseParts, axis: 0)
        let (xt, target) = FlowMatching.noisedInputs(x0: x0, noise: noise, sigmas: sigmas)
        return (xt, target, sigmas.map { $0 * 1000 }, guidance)
    }

    /// One optimizer step over the next global batch: this rank's data-parallel replica takes
    /// its contiguous slice of the batch (the cp ranks of a replica share it and split its video
    /// tokens), split into grad_accum micro-batches; gradients are summed over all ranks and the
    /// update applied by the ZeRO engine. The reported loss is the global batch mean.
    public func trainStep() throws -> StepStats {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try enterStage(config.stageIndex(forStep: step))
        let B = batchSize, dpRank = mesh.dpRank
        let local = B / mesh.dp, micro = local / config.train.grad_accum
        let indices: [Int]
        if let cache {
            // One batch slot per step: B samples of one bucket shape.
            let slot = order.next(1)[0]
            if plan?.epoch != order.epoch { plan = (order.epoch, cache.batchPlan(epoch: order.epoch, batchSize: B, seed: data.seed)) }
            indices = plan!.batches[slot]
        } else {
            indices = order.next(B)
        }
        var T = frames(forStep: step), latentH = data.height, latentW = data.width
        if let cache { let shape = cache.index.samples[indices[0]].shape; T = shape[1]; latentH = shape[2]; latentW = shape[3] }
        comm.step = step
        try engine.beginStep()
        var lossSum: Float = 0
        var pipeTimes = (idle: 0.0, total: 0.0)
        if pipeline != nil {
            (lossSum, pipeTimes.idle, pipeTimes.total) = try pipelineGradients(indices: indices, step: step, frames: T)
        } else {
            for m in 0..<config.train.grad_accum {
                // Gradient buckets are reduced during this micro-batch's backward (see ZeroEngine).
                try engine.beginMicroBatch(last: m == config.train.grad_accum - 1)
                let pos = Array((dpRank * local + m * micro)..<(dpRank * local + (m + 1) * micro))
                let (x0, tokens) = try microBatch(indices: indices, positions: pos, step: step, frames: T)
                lossSum += try accumulateGradients(x0: x0, text: textEncoder.encode(tokens: tokens), positions: pos, step: step) * Float(micro)
            }
        }
        let lr = schedule.lr(at: step)
        let norm = try engine.finishStep(lr: lr, clip: Float(config.train.clip_grad))
        // Only the last pipeline stage has a loss; the other stages add 0 (and their idle times).
        var total = pipeline == nil ? [lossSum] : [lossSum, Float(pipeTimes.idle), Float(pipeTimes.total)]
        try total.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: $0.count) }
        let s = step
        step += 1
        samplesSeen += B
        let tokens = B * config.model.videoTokens(latentT: T, latentH: latentH, latentW: latentW)
        var stats = StepStats(step: s, loss: total[0] / Float(B), gradNorm: norm, lr: lr, samples: B, videoTokens: tokens,
                              seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9, commSeconds: engine.takeCommSeconds())
        if pipeline != nil { stats.pipelineIdleSeconds = Double(total[1]); stats.pipelineSeconds = Double(total[2]) }
        // The all-reduced loss is the same on every rank, so all stop together.
        guard stats.loss.isFinite else { throw TrainingError.nonFiniteLoss(step: s, loss: stats.loss) }
        return stats
    }

    /// Restores counters after loading a checkpoint. With stages, `order` belongs to the stage of
    /// the last trained step; when `step` starts a new stage, that stage begins with a fresh order.
    public func restore(step: Int, samplesSeen: Int, order: DataOrder) throws {
        let trained = config.stageIndex(forStep: max(step - 1, 0)), next = config.stageIndex(forStep: step)
        try enterStage(trained)
        defer { self.optimizer.setStep(step) }
        if trained != next {
            try enterStage(next)
            self.step = step
            self.samplesSeen = samplesSeen
            return
        }
        self.step = step
        self.samplesSeen = samplesSeen
        // A latent cache's slot count depends on the batch size: a resume with another batch
        // size starts the checkpoint's epoch over.
        self.order = order.count == self.order.count ? order : DataOrder(count: self.order.count, seed: order.seed, epoch: order.epoch)
    }
}
