import Foundation
import HVModel
import HVNN
import HVTensor
import Yams

/// A training run's configuration (YAML). Omitted keys take the defaults below; `validate()`
/// errors name the file and the field. `version` guards future format changes.
public struct RunConfig: Codable, Sendable, Equatable {
    public static let currentVersion = 1

    public var version = RunConfig.currentVersion
    /// The DiT architecture (in a run file: a path to a model YAML, or the fields inline).
    public var model = DiTConfig()
    public var text_encoder = TextEncoderConfig()
    public var data = DataConfig()
    public var train = TrainConfig()
    public var flow = FlowConfig()
    public var checkpoint = CheckpointConfig()
    public var sample = SampleConfig()

    public init() {}

    /// hv-sample's defaults for models of this run (its flags override them). The official
    /// sampler's are 50 steps, shift 7, no CFG (REFERENCE.md); a small model trained briefly
    /// with caption dropout samples better with fewer steps, less shift and CFG.
    public struct SampleConfig: Codable, Sendable, Equatable {
        public var steps = 50
        public var shift = 7.0
        /// Classifier-free guidance scale (1 = off). CFG needs a model trained with
        /// flow.caption_dropout > 0 (the empty prompt is the unconditional branch).
        public var guidance = 1.0
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? d.steps
            shift = try c.decodeIfPresent(Double.self, forKey: .shift) ?? d.shift
            guidance = try c.decodeIfPresent(Double.self, forKey: .guidance) ?? d.guidance
        }
    }

    /// Progressive training: stages run one after another, each with its own data (the run's
    /// `data` fields, overridden by the stage's) and steps, one model and optimizer throughout;
    /// `train.steps` is their total and the LR schedule spans it. Empty: one stage of `data`.
    public var stages: [StageConfig] = []

    public struct StageConfig: Codable, Sendable, Equatable {
        public var name = ""
        public var steps = 0
        /// Global batch size in this stage (default: train.batch_size).
        public var batch_size: Int?
        public var data = DataConfig()
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decodeIfPresent(String.self, forKey: .name) ?? ""
            steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? 0
            batch_size = try c.decodeIfPresent(Int.self, forKey: .batch_size)
            data = try c.decodeIfPresent(DataConfig.self, forKey: .data) ?? DataConfig()
        }
    }

    /// Step ranges of the stages (one range over train.steps when there are none).
    public var stageRanges: [Range<Int>] {
        if stages.isEmpty { return [0..<train.steps] }
        var start = 0
        return stages.map { st in defer { start += st.steps }; return start..<(start + st.steps) }
    }

    /// The stage that trains step `s` (the last stage for steps past the end).
    public func stageIndex(forStep s: Int) -> Int {
        stageRanges.firstIndex { $0.contains(s) } ?? max(stageRanges.count - 1, 0)
    }

    /// Data and batch size of stage `i`.
    public func stageData(_ i: Int) -> (data: DataConfig, batchSize: Int) {
        stages.isEmpty ? (data, train.batch_size) : (stages[i].data, stages[i].batch_size ?? train.batch_size)
    }

    public struct CheckpointConfig: Codable, Sendable, Equatable {
        /// Save every N steps (0 = only at the end and on a graceful stop).
        public var every = 0
        /// Keep the newest K checkpoints.
        public var keep = 3
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            every = try c.decodeIfPresent(Int.self, forKey: .every) ?? 0
            keep = try c.decodeIfPresent(Int.self, forKey: .keep) ?? 3
        }
    }

    public struct TextEncoderConfig: Codable, Sendable, Equatable {
        public var vocab_size = 4096
        public var max_tokens = 16
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            vocab_size = try c.decodeIfPresent(Int.self, forKey: .vocab_size) ?? d.vocab_size
            max_tokens = try c.decodeIfPresent(Int.self, forKey: .max_tokens) ?? d.max_tokens
        }
    }

    public struct DataConfig: Codable, Sendable, Equatable {
        /// `synthetic-latents`: coloured shapes moving in latent space (see SyntheticLatents).
        /// `latent-cache`: VAE latents and tokenised captions written by `hv-data encode` into
        /// the directory `path`; batches never mix bucket shapes; the image/video mix follows the
        /// cache (`frames`, `height`, `width`, `count` and `image_ratio` are not used).
        public var kind = "synthetic-latents"
        /// Directory of a latent cache (kind latent-cache).
        public var path = ""
        public var count = 256
        /// Latent frames, height, width of video samples (images are 1 frame).
        public var frames = 3
        public var height = 8
        public var width = 8
        /// Fraction of batches made of single-frame (image) samples.
        public var image_ratio = 0.0
        public var seed: UInt64 = 0
        /// Side of the moving shape in latent pixels (0: a third of the smaller side, at least 2).
        public var object_size = 0
        /// true: the shape starts anywhere it fits; false: its path is centred in the frame, so
        /// the caption determines the clip up to the background (learnable in a CPU minute).
        public var random_start = true
        /// Latent pixels the shape moves per frame (a multiple of the patch size moves it a
        /// whole token per frame).
        public var speed = 1
        public static let kinds = ["synthetic-latents", "latent-cache"]
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            kind = try c.decodeIfPresent(String.self, forKey: .kind) ?? d.kind
            path = try c.decodeIfPresent(String.self, forKey: .path) ?? d.path
            count = try c.decodeIfPresent(Int.self, forKey: .count) ?? d.count
            frames = try c.decodeIfPresent(Int.self, forKey: .frames) ?? d.frames
            height = try c.decodeIfPresent(Int.self, forKey: .height) ?? d.height
            width = try c.decodeIfPresent(Int.self, forKey: .width) ?? d.width
            image_ratio = try c.decodeIfPresent(Double.self, forKey: .image_ratio) ?? d.image_ratio
            seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? d.seed
            object_size = try c.decodeIfPresent(Int.self, forKey: .object_size) ?? d.object_size
            random_start = try c.decodeIfPresent(Bool.self, forKey: .random_start) ?? d.random_start
            speed = try c.decodeIfPresent(Int.self, forKey: .speed) ?? d.speed
        }
    }

    public struct TrainConfig: Codable, Sendable, Equatable {
        public var steps = 100
        /// Samples per optimizer step (across all data-parallel ranks and micro-batches).
        public var batch_size = 4
        /// Micro-batches per optimizer step (gradient accumulation).
        public var grad_accum = 1
        public var lr = 1e-3
        public var schedule = LRSchedule.Kind.constant
        public var warmup_steps = 0
        public var min_lr_ratio = 0.1
        public var weight_decay = 0.0
        public var beta1 = 0.9
        public var beta2 = 0.999
        /// Clip the global gradient norm to this (0 = off). Official fine-tuning: 1.0.
        public var clip_grad = 1.0
        public var seed: UInt64 = 0
        /// Recompute each block's activations in backward.
        public var recompute = false
        /// Context-parallel degree: video tokens split over this many ranks (ring attention);
        /// the workers form a dp x cp mesh, dp = workers / cp.
        public var context_parallel = 1
        /// Pipeline-parallel degree: the DiT's blocks cut into this many stages (balanced by
        /// FLOPs); the workers form a dp x cp x pp mesh, dp = workers / (cp x pp).
        public var pipeline_parallel = 1
        /// Micro-batches per optimizer step of each pipeline (1F1B schedule); with
        /// pipeline_parallel > 1 they replace grad_accum (which must then be 1).
        public var micro_batches = 1
        /// Matmul precision: "fp32", or "bf16" (bf16 GEMM operands, fp32 sums; weights, gradients,
        /// optimizer state and all other ops stay fp32 — needs a CPU with AVX512-BF16).
        public var precision = "fp32"
        public var log_every = 10
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? d.steps
            batch_size = try c.decodeIfPresent(Int.self, forKey: .batch_size) ?? d.batch_size
            grad_accum = try c.decodeIfPresent(Int.self, forKey: .grad_accum) ?? d.grad_accum
            lr = try c.decodeIfPresent(Double.self, forKey: .lr) ?? d.lr
            schedule = try c.decodeIfPresent(LRSchedule.Kind.self, forKey: .schedule) ?? d.schedule
            warmup_steps = try c.decodeIfPresent(Int.self, forKey: .warmup_steps) ?? d.warmup_steps
            min_lr_ratio = try c.decodeIfPresent(Double.self, forKey: .min_lr_ratio) ?? d.min_lr_ratio
            weight_decay = try c.decodeIfPresent(Double.self, forKey: .weight_decay) ?? d.weight_decay
            beta1 = try c.decodeIfPresent(Double.self, forKey: .beta1) ?? d.beta1
            beta2 = try c.decodeIfPresent(Double.self, forKey: .beta2) ?? d.beta2
            clip_grad = try c.decodeIfPresent(Double.self, forKey: .clip_grad) ?? d.clip_grad
            seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? d.seed
            recompute = try c.decodeIfPresent(Bool.self, forKey: .recompute) ?? d.recompute
            context_parallel = try c.decodeIfPresent(Int.self, forKey: .context_parallel) ?? d.context_parallel
            pipeline_parallel = try c.decodeIfPresent(Int.self, forKey: .pipeline_parallel) ?? d.pipeline_parallel
            micro_batches = try c.decodeIfPresent(Int.self, forKey: .micro_batches) ?? d.micro_batches
            precision = try c.decodeIfPresent(String.self, forKey: .precision) ?? d.precision
            log_every = try c.decodeIfPresent(Int.self, forKey: .log_every) ?? d.log_every
        }
    }

    public struct FlowConfig: Codable, Sendable, Equatable {
        /// Time-step shift s: sigma' = s*sigma / (1 + (s-1)*sigma). 1 = none; the I2V release used 7.
        public var time_shift = 1.0
        /// Draw sigma = sigmoid(N(0,1)) (logit-normal) instead of uniform.
        public var logit_normal = true
        /// Guidance scales for the CFG-distilled variant are drawn uniformly from this range.
        public var guidance_min = 1.0
        public var guidance_max = 8.0
        /// Fraction of training samples whose caption is replaced by the empty prompt, so the
        /// model also learns the unconditional velocity that classifier-free guidance needs.
        public var caption_dropout = 0.0
        public init() {}
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            time_shift = try c.decodeIfPresent(Double.self, forKey: .time_shift) ?? d.time_shift
            logit_normal = try c.decodeIfPresent(Bool.self, forKey: .logit_normal) ?? d.logit_normal
            guidance_min = try c.decodeIfPresent(Double.self, forKey: .guidance_min) ?? d.guidance_min
            guidance_max = try c.decodeIfPresent(Double.self, forKey: .guidance_max) ?? d.guidance_max
            caption_dropout = try c.decodeIfPresent(Double.self, forKey: .caption_dropout) ?? d.caption_dropout
        }
    }

    enum CodingKeys: String, CodingKey { case version, model, text_encoder, data, train, flow, checkpoint, sample, stages }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? RunConfig.currentVersion
        model = try c.decodeIfPresent(DiTConfig.self, forKey: .model) ?? DiTConfig()
        text_encoder = try c.decodeIfPresent(TextEncoderConfig.self, forKey: .text_encoder) ?? TextEncoderConfig()
        data = try c.decodeIfPresent(DataConfig.self, forKey: .data) ?? DataConfig()
        train = try c.decodeIfPresent(TrainConfig.self, forKey: .train) ?? TrainConfig()
        flow = try c.decodeIfPresent(FlowConfig.self, forKey: .flow) ?? FlowConfig()
        checkpoint = try c.decodeIfPresent(CheckpointConfig.self, forKey: .checkpoint) ?? CheckpointConfig()
        sample = try c.decodeIfPresent(SampleConfig.self, forKey: .sample) ?? SampleConfig()
        stages = try c.decodeIfPresent([StageConfig].self, forKey: .stages) ?? []
    }

    /// Largest global batch a config may ask for (a typo like 1e12 would otherwise only show as
    /// an allocation failure or a hang).
    public static let maxBatchSize = 1 << 16

    public func validate(file: String = "<config>") throws {
        func fail(_ field: String, _ message: String) throws -> Never { throw ConfigError.invalid(file: file, field: field, message: message) }
        if version != RunConfig.currentVersion { try fail("version", "unsupported version \(version) (this hv reads \(RunConfig.currentVersion))") }
        do { try model.validate() } catch let DiTConfig.ValidationError.invalid(field, message) { try fail("model.\(field)", message) }
        func check(_ data: DataConfig, _ prefix: String) throws {
            if !DataConfig.kinds.contains(data.kind) { try fail(prefix + "kind", "unknown kind '\(data.kind)' (known: \(DataConfig.kinds.joined(separator: ", ")))") }
            if data.kind == "latent-cache" {
                if data.path.isEmpty { try fail(prefix + "path", "kind latent-cache needs the cache directory written by hv-data encode") }
                if data.image_ratio != 0 { try fail(prefix + "image_ratio", "not used with kind latent-cache: the image/video mix follows the cache (hv-data encode --image-samples adds 1-frame samples)") }
            }
            if data.count < 1 { try fail(prefix + "count", "must be >= 1") }
            let p = model.patch_size
            if data.frames < 1 || data.frames % p[0] != 0 { try fail(prefix + "frames", "\(data.frames) must be a positive multiple of patch t \(p[0])") }
            if data.height < 1 || data.height % p[1] != 0 { try fail(prefix + "height", "\(data.height) must be a positive multiple of patch h \(p[1])") }
            if data.width < 1 || data.width % p[2] != 0 { try fail(prefix + "width", "\(data.width) must be a positive multiple of patch w \(p[2])") }
            if !(0...1).contains(data.image_ratio) { try fail(prefix + "image_ratio", "must be in [0, 1]") }
            // The synthetic data divides by speed and sizes its shapes by object_size (a stage
            // inherits the run's value and may be smaller: the shape is clipped to the frame).
            if data.kind != "latent-cache" {
                if data.object_size < 0 { try fail(prefix + "object_size", "\(data.object_size) must be >= 0 (0: the default size)") }
                if data.speed < 1 { try fail(prefix + "speed", "must be >= 1") }
            }
        }
        try check(data, "data.")
        if data.object_size > min(data.height, data.width) {
            try fail("data.object_size", "\(data.object_size) must be 0 (default) or fit in the \(data.height)x\(data.width) latent frame")
        }
        if train.grad_accum < 1 { try fail("train.grad_accum", "must be >= 1") }
        for (i, st) in stages.enumerated() {
            try check(st.data, "stages.\(i).data.")
            if st.steps < 1 { try fail("stages.\(i).steps", "must be >= 1") }
            if let b = st.batch_size, b < 1 || b > RunConfig.maxBatchSize || b % train.grad_accum != 0 {
                try fail("stages.\(i).batch_size", "\(b) must be in 1...\(RunConfig.maxBatchSize) and a multiple of train.grad_accum \(train.grad_accum)")
            }
        }
        if train.steps < 0 { try fail("train.steps", "must be >= 0") }
        if train.batch_size < 1 || train.batch_size > RunConfig.maxBatchSize { try fail("train.batch_size", "\(train.batch_size) must be in 1...\(RunConfig.maxBatchSize)") }
        if train.context_parallel < 1 { try fail("train.context_parallel", "must be >= 1") }
        if MatmulPrecision(rawValue: train.precision) == nil {
            try fail("train.precision", "'\(train.precision)' is not one of \(MatmulPrecision.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if train.pipeline_parallel < 1 { try fail("train.pipeline_parallel", "must be >= 1") }
        if train.pipeline_parallel > model.mm_double_blocks_depth + model.mm_single_blocks_depth {
            try fail("train.pipeline_parallel", "\(train.pipeline_parallel) is more than the model's \(model.mm_double_blocks_depth + model.mm_single_blocks_depth) blocks: every stage needs one")
        }
        if train.micro_batches < 1 || train.batch_size % train.micro_batches != 0 {
            try fail("train.micro_batches", "\(train.micro_batches) must divide batch_size \(train.batch_size)")
        }
        if train.pipeline_parallel > 1 && train.grad_accum != 1 {
            try fail("train.grad_accum", "must be 1 with train.pipeline_parallel > 1: use train.micro_batches (the pipeline's gradient accumulation)")
        }
        if train.grad_accum < 1 || train.batch_size % train.grad_accum != 0 {
            try fail("train.grad_accum", "\(train.grad_accum) must divide batch_size \(train.batch_size)")
        }
        if !(train.lr > 0) { try fail("train.lr", "must be > 0") }
        if train.log_every < 1 { try fail("train.log_every", "must be >= 1") }
        if text_encoder.max_tokens < 1 { try fail("text_encoder.max_tokens", "must be >= 1") }
        if text_encoder.vocab_size < 2 { try fail("text_encoder.vocab_size", "must be >= 2") }
        if !(flow.time_shift > 0) { try fail("flow.time_shift", "must be > 0") }
        if checkpoint.every < 0 { try fail("checkpoint.every", "must be >= 0") }
        if checkpoint.keep < 1 { try fail("checkpoint.keep", "must be >= 1") }
        if flow.guidance_min > flow.guidance_max { try fail("flow.guidance_min", "must not exceed guidance_max") }
        if !(0..<1).contains(flow.caption_dropout) { try fail("flow.caption_dropout", "must be in [0, 1)") }
        if sample.steps < 1 { try fail("sample.steps", "must be >= 1") }
        if !(sample.shift > 0) { try fail("sample.shift", "must be > 0") }
        if !(sample.guidance >= 1) { try fail("sample.guidance", "must be >= 1 (1 = no classifier-free guidance)") }
    }

    /// Reads a run config; a string `model:` value is a path to a model YAML (relative to the
    /// run file's directory, then to the working directory).
    public static func load(path: String) throws -> RunConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError.unreadable(file: path, reason: error.localizedDescription)
        }
        let yaml: Any?
        do { yaml = try Yams.load(yaml: text) } catch { throw ConfigError.syntax(file: path, reason: "\(error)") }
        guard var dict = yaml as? [String: Any] else { throw ConfigError.syntax(file: path, reason: "top level must be a mapping") }
        if let modelPath = dict["model"] as? String {
            let dir = (path as NSString).deletingLastPathComponent
            let candidates = [(dir as NSString).appendingPathComponent(modelPath), modelPath]
            guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
                throw ConfigError.invalid(file: path, field: "model", message: "model file '\(modelPath)' not found (looked in \(candidates))")
            }
            let modelText = try String(contentsOfFile: found, encoding: .utf8)
            do { dict["model"] = try Yams.load(yaml: modelText) } catch { throw ConfigError.syntax(file: found, reason: "\(error)") }
        }
        try checkUnknownKeys(dict, file: path)
        var stepsGiven: Int? = nil
        if let stages = dict["stages"] {
            guard let list = stages as? [Any] else { throw ConfigError.invalid(file: path, field: "stages", message: "must be a list of stages") }
            let runData = dict["data"] as? [String: Any] ?? [:]
            dict["stages"] = try list.enumerated().map { (i, item) -> [String: Any] in
                guard var st = item as? [String: Any] else { throw ConfigError.invalid(file: path, field: "stages.\(i)", message: "must be a mapping (name, steps, batch_size, data)") }
                try checkUnknownKeys(st, file: path, known: RunConfig.StageConfig(), prefix: "stages.\(i).")
                guard st["steps"] != nil else { throw ConfigError.invalid(file: path, field: "stages.\(i).steps", message: "missing") }
                // The stage's data fields override the run's.
                if let d = st["data"], !(d is [String: Any]), !(d is NSNull) {
                    throw ConfigError.invalid(file: path, field: "stages.\(i).data", message: "must be a mapping of data fields")
                }
                st["data"] = runData.merging(st["data"] as? [String: Any] ?? [:]) { $1 }
                return st
            }
            stepsGiven = (dict["train"] as? [String: Any])?["steps"] as? Int
        }
        var config: RunConfig
        do {
            let normalized = try Yams.dump(object: dict)
            config = try YAMLDecoder().decode(RunConfig.self, from: normalized)
        } catch let e as DecodingError {
            throw ConfigError.from(e, file: path)
        }
        if !config.stages.isEmpty {
            var total = 0
            for (i, st) in config.stages.enumerated() {
                let (sum, overflow) = total.addingReportingOverflow(st.steps)
                guard !overflow else { throw ConfigError.invalid(file: path, field: "stages.\(i).steps", message: "the stages' total number of steps overflows") }
                total = sum
            }
            if let given = stepsGiven, given != total {
                throw ConfigError.invalid(file: path, field: "train.steps", message: "\(given) differs from the stages' total \(total) (leave it out: with stages it is their sum)")
            }
            config.train.steps = total
        }
        try config.validate(file: path)
        return config
    }

    /// The effective configuration as YAML (what `dump-config` prints and checkpoints store).
    public func yaml() -> String { (try? YAMLEncoder().encode(self)) ?? "" }
    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: (try? enc.encode(self)) ?? Data(), as: UTF8.self)
    }
}

/// Rejects keys that no field reads (typos would otherwise be silently ignored).
func checkUnknownKeys(_ user: [String: Any], file: String) throws {
    try checkUnknownKeys(user, file: file, known: RunConfig(), prefix: "")
}

func checkUnknownKeys<T: Encodable>(_ user: [String: Any], file: String, known value: T, prefix: String) throws {
    guard let data = try? JSONEncoder().encode(value),
          var known = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return }
    if T.self == RunConfig.StageConfig.self { known["batch_size"] = 0 }  // nil optionals are not encoded
    func walk(_ u: [String: Any], _ k: [String: Any], _ prefix: String) throws {
        for (key, value) in u {
            guard let kv = k[key] else {
                throw ConfigError.invalid(file: file, field: prefix + key, message: "unknown key (known here: \(k.keys.sorted().joined(separator: ", ")))")
            }
            if let uSub = value as? [String: Any], let kSub = kv as? [String: Any] { try walk(uSub, kSub, prefix + key + ".") }
        }
    }
    try walk(user, known, prefix)
}

/// Loads a bare model YAML (DiTConfig fields).
public func loadModelConfig(path: String) throws -> DiTConfig {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw ConfigError.unreadable(file: path, reason: error.localizedDescription)
    }
    do {
        let c = try YAMLDecoder().decode(DiTConfig.self, from: text)
        do { try c.validate() } catch let DiTConfig.ValidationError.invalid(field, message) {
            throw ConfigError.invalid(file: path, field: field, message: message)
        }
        return c
    } catch let e as DecodingError { throw ConfigError.from(e, file: path) }
}

public enum ConfigError: Error, CustomStringConvertible {
    case unreadable(file: String, reason: String)
    case syntax(file: String, reason: String)
    case invalid(file: String, field: String, message: String)

    public var description: String {
        switch self {
        case .unreadable(let f, let r): "cannot read config \(f): \(r)"
        case .syntax(let f, let r): "\(f): not valid YAML: \(r)"
        case .invalid(let f, let field, let m): "\(f): field '\(field)': \(m)"
        }
    }

    static func from(_ e: DecodingError, file: String) -> ConfigError {
        func path(_ ctx: DecodingError.Context) -> String { ctx.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
        switch e {
        case .typeMismatch(_, let ctx), .dataCorrupted(let ctx):
            return .invalid(file: file, field: path(ctx), message: ctx.debugDescription)
        case .keyNotFound(let key, let ctx):
            return .invalid(file: file, field: (path(ctx).isEmpty ? "" : path(ctx) + ".") + key.stringValue, message: "missing")
        case .valueNotFound(_, let ctx):
            return .invalid(file: file, field: path(ctx), message: "missing value")
        @unknown default:
            return .syntax(file: file, reason: "\(e)")
        }
    }
}

/// Loads a VAE config YAML.
public func loadVAEConfig(path: String) throws -> VAEConfig {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw ConfigError.unreadable(file: path, reason: error.localizedDescription)
    }
    do {
        let c = try YAMLDecoder().decode(VAEConfig.self, from: text)
        do { try c.validate() } catch let DiTConfig.ValidationError.invalid(field, message) {
            throw ConfigError.invalid(file: path, field: field, message: message)
        }
        return c
    } catch let e as DecodingError { throw ConfigError.from(e, file: path) }
}
