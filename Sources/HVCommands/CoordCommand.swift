import ArgumentParser
import Foundation
import HVComm
import HVModel
import HVParallel
import HVSampling
import HVTensor
import HVTrain

/// `hv-coord`: plans, trains and (with the distributed runtime) launches runs.
public struct CoordCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-coord",
        abstract: "Plan and run HunyuanVideo DiT training.",
        discussion: """
        Quick start:  hv-coord launch --nodes cluster/hosts.local --config configs/runs/quickstart.yaml
        One process:  hv-coord train --config configs/runs/quickstart.yaml
        Model sizes:  hv-coord plan --config configs/models/hyvideo-t2-13b.yaml
        """,
        subcommands: [LaunchCommand.self, TrainCommand.self, TrainVAECommand.self, ExportVAECommand.self, PlanCommand.self, DumpConfigCommand.self, WorkerCommand.self])
    public init() {}
}

/// Reads either a run config or a bare model config.
func loadAnyConfig(_ path: String) throws -> (run: RunConfig?, model: DiTConfig) {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    let isRun = text.split(separator: "\n").contains { $0.hasPrefix("model:") || $0.hasPrefix("train:") || $0.hasPrefix("data:") }
    if isRun {
        let run = try RunConfig.load(path: path)
        return (run, run.model)
    }
    return (nil, try loadModelConfig(path: path))
}

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train in this process (flow matching, AdamW) and report loss, tokens/s and ETA.")

    @Option(help: "Run config (YAML), e.g. configs/runs/quickstart.yaml.") var config: String
    @Option(help: "Override train.steps.") var steps: Int?
    @Option(help: "Override train.seed.") var seed: UInt64?
    @Option(help: "Write the loss of every step to this CSV file (step,loss,grad_norm,lr).") var lossCsv: String?
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        try runOrExit {
            threads.apply()
            var cfg = try RunConfig.load(path: config)
            if let steps { cfg.train.steps = steps }
            if let seed { cfg.train.seed = seed }
            try cfg.validate(file: config)
            let trainer = try Trainer(config: cfg)
            stderrLine("hv: training \(cfg.model.parameterCount.formatted()) DiT parameters + \(trainer.textEncoder.parameterCount) text-encoder parameters for \(cfg.train.steps) steps (batch \(cfg.train.batch_size), OpenBLAS \(BLAS.coreName) x\(BLAS.threads))")
            var csv = "step,loss,grad_norm,lr\n"
            var window: [Trainer.StepStats] = []
            let start = Date()
            // The losses so far are written even when a step fails (that is when they matter).
            var finished = false
            defer { if !finished, let lossCsv { try? csv.write(toFile: lossCsv, atomically: true, encoding: .utf8) } }
            for _ in 0..<cfg.train.steps {
                let s = try trainer.trainStep()
                if trainer.endsStage(trainer.step) { stderrLine("hv: stage \(trainer.stage) (\(cfg.stages[trainer.stage].name)) done at step \(trainer.step)") }
                csv += "\(s.step),\(s.loss),\(s.gradNorm),\(s.lr)\n"
                window.append(s)
                if (s.step + 1) % cfg.train.log_every == 0 || s.step + 1 == cfg.train.steps {
                    let secs = window.map(\.seconds).reduce(0, +)
                    let tokens = window.map(\.videoTokens).reduce(0, +)
                    let meanLoss = window.map(\.loss).reduce(0, +) / Float(window.count)
                    let eta = Double(cfg.train.steps - s.step - 1) * secs / Double(window.count)
                    outLine(String(format: "step %5ld/%ld  loss %.4f  grad %.3f  lr %.2e  %.0f tok/s  eta %.0fs",
                                 s.step + 1, cfg.train.steps, meanLoss, s.gradNorm, s.lr, Double(tokens) / secs, eta))
                    window.removeAll()
                }
            }
            stderrLine(String(format: "hv: done in %.1fs", Date().timeIntervalSince(start)))
            finished = true
            if let lossCsv { try csv.write(toFile: lossCsv, atomically: true, encoding: .utf8) }
        }
    }
}

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Parameter count, training FLOPs per sample and model-state memory, without allocating the model.")

    @Option(help: "Model or run config (YAML).") var config: String
    @Option(help: "Latent frames x height x width per sample (default: the run's data, or 33x90x160 = 129 frames at 720p).")
    var latent: String?
    @Option(help: "Text tokens per sample (default: the run's text_encoder.max_tokens, else 256 as in the release).") var textTokens: Int?
    @Option(help: "Data-parallel ranks for the per-rank memory table (default: the hosts file's slots, else 8).") var ranks: Int?
    @Option(help: "Hosts file of the planned run: per-rank and per-host memory for its layout.") var nodes: String?
    @Option(help: "ZeRO stage of the planned run (with --nodes).") var zero: Int?

    func run() throws {
        try runOrExit {
            let (run, model) = try loadAnyConfig(config)
            var dims = [33, 90, 160]
            if let run { dims = [run.data.frames, run.data.height, run.data.width] }
            if let latent {
                let parts = latent.split(separator: "x").compactMap { Int($0) }
                guard parts.count == 3 else { throw ValidationError("--latent must look like 33x90x160") }
                dims = parts
            }
            let textTokens = self.textTokens ?? run?.text_encoder.max_tokens ?? 256
            let n = model.parameterCount
            let tokens = model.videoTokens(latentT: dims[0], latentH: dims[1], latentW: dims[2])
            let flops = model.trainingFLOPs(videoTokens: tokens, textTokens: textTokens)
            let sixND = 6 * Double(n) * Double(tokens + textTokens)
            print("model            \(config)")
            print(String(format: "parameters       %@ (%.3f B)", n.formatted() as NSString, Double(n) / 1e9))
            print("blocks           \(model.mm_double_blocks_depth) dual-stream + \(model.mm_single_blocks_depth) single-stream, hidden \(model.hidden_size), \(model.heads_num) heads")
            print("sample           latent \(dims[0])x\(dims[1])x\(dims[2]) -> \(tokens) video tokens + \(textTokens) text tokens")
            print(String(format: "train FLOPs      %.3e per sample (6·N·tokens alone: %.3e; attention adds %.1fx)", flops, sixND, flops / sixND))
            let gib = 1024.0 * 1024 * 1024
            let hosts = try nodes.map { try HostsFile.load(path: $0) }
            let ranks = self.ranks ?? hosts?.worldSize ?? 8
            // Pipeline stages hold only their parameters; ZeRO shards each over the stage's ranks.
            let pp = run?.train.pipeline_parallel ?? 1
            guard ranks % pp == 0 else { throw ValidationError("train.pipeline_parallel \(pp) does not divide \(ranks) ranks") }
            var held = [n]
            if pp > 1 {
                let partition = try PipelinePartition(config: model, stages: pp, videoTokens: tokens, textTokens: textTokens)
                held = partition.parameterCounts(model)
                print("pipeline         \(partition)")
                print("stage params     " + held.enumerated().map { "stage \($0.offset): \($0.element.formatted())" }.joined(separator: ", ")
                      + " (per-rank figures below are the largest stage's, over its \(ranks / pp) ranks)")
            }
            let P = Double(held.max()!)
            let R = Double(ranks / pp)
            // fp32 throughout: 4 bytes weights + 4 grads + 8 Adam moments per parameter.
            print(String(format: "model states     fp32 weights 4 + grads 4 + Adam 8 = 16 bytes/param -> %.1f GiB replicated", 16 * P / gib))
            print(String(format: "per rank (%d)     ZeRO-1 (8 + 8/N)Ψ: %.1f GiB   ZeRO-2 (4 + 12/N)Ψ: %.1f GiB   ZeRO-3 16Ψ/N: %.1f GiB",
                         ranks / pp, (8 + 8 / R) * P / gib, (4 + 12 / R) * P / gib, 16 * P / R / gib))
            if let hosts {
                let stage = zero ?? 0
                guard (0...3).contains(stage) else { throw ValidationError("--zero must be 0-3") }
                let perRank = [16 * P, (8 + 8 / R) * P, (4 + 12 / R) * P, 16 * P / R][stage]
                print(String(format: "this run       %d rank(s) on %d host(s), ZeRO %d: %.2f GiB model states per rank (+ activations and gathered units)",
                             hosts.worldSize, hosts.hosts.count, stage, perRank / gib))
                let ram = Double(ProcessInfo.processInfo.physicalMemory)
                for e in hosts.entries {
                    let need = perRank * Double(e.slots)
                    let local = HostsFile.isLocal(e.host)
                    let verdict = local ? (need < 0.8 * ram ? "fits in this machine's \(String(format: "%.0f", ram / gib)) GiB" : "does NOT fit in this machine's \(String(format: "%.0f", ram / gib)) GiB") : "check the host's memory"
                    print(String(format: "  %@ x%d: %.2f GiB — %@", e.host as NSString, e.slots, need / gib, verdict as NSString))
                }
            }
        }
    }
}

struct DumpConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump-config", abstract: "Print the effective run config (defaults filled in) as YAML.")
    @Option(help: "Run config (YAML).") var config: String

    func run() throws {
        try runOrExit { print(try RunConfig.load(path: config).yaml()) }
    }
}

struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Start one worker per slot of a hosts file and train together (data parallel, ZeRO 0-3).",
        discussion: """
        Hosts file (DeepSpeed format): one `HOST slots=N` per line, `#` comments. localhost/127.0.0.1 workers
        start as local processes; other hosts over ssh (hv built at the same path), or through --template,
        e.g. --template 'ip netns exec {host} {cmd}' for the network-namespace rig in cluster/.
        Worker logs: RUN_DIR/logs/rank-N.log; metrics: RUN_DIR/metrics.jsonl (one JSON object per step).

        Sampling spread over the workers (context parallel: each rank computes the velocity of its share of the
        video tokens, attention runs as ring attention over ZeroMQ; rank 0 writes the files): --sample, then `--`
        and hv-sample's arguments, e.g.
          hv-coord launch --nodes cluster/hosts.local --sample -- --checkpoint checkpoints/tiny --prompt "a red square moving right" --out red.mp4
        """)

    @Option(help: "Hosts file (`HOST slots=N` per line).") var nodes: String
    @Option(help: "Run config (YAML); not used with --sample (the checkpoint holds its run config).") var config: String?
    @Flag(help: "Sample instead of training: every argument after `--` is hv-sample's (--checkpoint, --prompt, --out, ...).")
    var sample = false
    @Argument(parsing: .postTerminator, help: "With --sample: hv-sample's arguments, after `--`.") var sampleArguments: [String] = []
    @Option(help: "Run directory (logs, metrics, checkpoints). Default: checkpoints/<config name>.") var runDir: String?
    @Option(help: "Override train.steps.") var steps: Int?
    @Option(help: "ZeRO stage: 0 replicated, 1 optimizer state, 2 + gradients, 3 + parameters sharded.") var zero = 0
    @Option(help: "Only these hosts/slots, e.g. worker-2:0,1@worker-3.") var include: String?
    @Option(help: "All but these hosts/slots.") var exclude: String?
    @Option(help: "auto (local for this machine, ssh otherwise), local, ssh or template.") var launcher = "auto"
    @Option(help: "Command template for every worker, with {host} and {cmd}.") var template: String?
    @Option(help: "Address to bind the control socket; workers connect to it (default 127.0.0.1 when all hosts are local).")
    var coordAddress: String?
    @Option(help: "Control port (0 = any free port).") var port = 0
    @Option(help: "Seconds to wait for every worker to join.") var rendezvousTimeout = 60.0
    @Option(help: "Seconds a collective may wait for a peer before failing.") var collectiveTimeout = 120.0
    @Flag(help: "Send gradients/parameters as bf16 on the wire (half the traffic; rounding).") var bf16Wire = false
    @Flag(help: "Do not echo worker logs to the terminal (they are still written to RUN_DIR/logs).") var quiet = false
    @Option(help: "Override train.batch_size (global batch; must divide by workers x grad_accum).") var batchSize: Int?
    @Option(help: "Stop after this step (saving a checkpoint) without changing the LR schedule's length.") var stopAt: Int?
    @Option(help: "Seconds without a heartbeat before a worker (or, seen from a worker, the coordinator) is declared dead.")
    var heartbeatTimeout = 30.0
    @Option(help: "Relaunch the run from its latest checkpoint up to N times when a worker fails (torchrun's --max-restarts).")
    var maxRestarts = 0
    @Option(help: "Resume: `auto` (latest good checkpoint in RUN_DIR/checkpoints, else start fresh) or a checkpoint directory.")
    var resume: String?
    @Flag(help: "Turn off CurveZMQ authentication of the control and data sockets (any host that can reach the ports can then join, send commands and inject tensors). Only for a network you trust.")
    var insecureNoAuth = false
    @Option(help: "auto (CURVE if this libzmq has it, else HMAC), curve, or hmac (shared-secret tokens over ZeroMQ PLAIN: authenticated, not encrypted).")
    var authMechanism = "auto"
    @Flag(help: "When a checkpoint save fails (disk full, directory not writable), log it and keep training instead of stopping the run.")
    var continueOnSaveError = false

    func run() throws {
        try runOrExit {
            guard (0...3).contains(zero) else { throw ValidationError("--zero must be 0, 1, 2 or 3") }
            guard let mode = LaunchOptions.Launcher(rawValue: launcher) else { throw ValidationError("--launcher must be auto, local, ssh or template") }
            let hosts = try HostsFile.load(path: nodes).filtered(include: include, exclude: exclude)
            if sample { return try launchSampling(hosts: hosts, mode: mode) }
            guard sampleArguments.isEmpty else { throw ValidationError("arguments after `--` are hv-sample's and need --sample") }
            guard let config else { throw ValidationError("give --config RUN.yaml (or --sample -- ... to sample from a checkpoint)") }
            if let steps, steps < 0 { throw ValidationError("--steps must be >= 0 (got \(steps))") }
            if let batchSize, batchSize < 1 { throw ValidationError("--batch-size must be >= 1 (got \(batchSize))") }
            if VAERunConfig.isVAERun(path: config) { return try launchVAE(hosts: hosts, mode: mode, config: config) }
            var cfg = try RunConfig.load(path: config)
            if let steps { cfg.train.steps = steps }
            if let batchSize { cfg.train.batch_size = batchSize }
            try cfg.validate(file: config)  // with the overrides
            let world = hosts.worldSize
            let cp = cfg.train.context_parallel, pp = cfg.train.pipeline_parallel
            guard cp >= 1, world % cp == 0 else {
                throw ValidationError("\(config): train.context_parallel \(cp) does not divide the \(world) slots of \(nodes) (world = dp x cp)")
            }
            guard pp >= 1, world % (cp * pp) == 0 else {
                throw ValidationError("\(config): train.context_parallel \(cp) x train.pipeline_parallel \(pp) does not divide the \(world) slots of \(nodes) (world = dp x cp x pp)")
            }
            let dp = world / (cp * pp)
            let accum = pp > 1 ? cfg.train.micro_batches : cfg.train.grad_accum
            guard cfg.train.batch_size % (dp * accum) == 0 else {
                throw ValidationError("\(config): train.batch_size \(cfg.train.batch_size) is not divisible by \(dp) data-parallel replicas (\(world) workers / (cp \(cp) x pp \(pp))) x \(pp > 1 ? "micro_batches" : "grad_accum") \(accum)")
            }
            let allLocal = hosts.hosts.allSatisfy(HostsFile.isLocal)
            let name = ((config as NSString).lastPathComponent as NSString).deletingPathExtension
            var opts = try launchOptions(hosts: hosts, mode: mode, configPath: config, runDir: runDir ?? "checkpoints/\(name)", allLocal: allLocal)
            opts.resume = resume
            opts.batchSize = batchSize
            opts.stopAt = stopAt
            opts.continueOnSaveError = continueOnSaveError
            try supervise(opts)
        }
    }

    /// A VAE run config (`vae:` section): the same workers, data parallel over the global batch.
    func launchVAE(hosts: HostsFile, mode: LaunchOptions.Launcher, config: String) throws {
        var cfg = try VAERunConfig.load(path: config)
        if let steps { cfg.train.steps = steps }
        if let batchSize { cfg.train.batch_size = batchSize }
        try cfg.validate(file: config)
        guard zero <= 2 else { throw ValidationError("\(config): a VAE run trains with --zero 0, 1 or 2 (stage 3 needs the DiT's per-block gather hooks)") }
        guard cfg.train.batch_size % hosts.worldSize == 0 else {
            throw ValidationError("\(config): train.batch_size \(cfg.train.batch_size) is not divisible by the \(hosts.worldSize) workers of \(nodes)")
        }
        let name = ((config as NSString).lastPathComponent as NSString).deletingPathExtension
        var opts = try launchOptions(hosts: hosts, mode: mode, configPath: config, runDir: runDir ?? "checkpoints/\(name)",
                                     allLocal: hosts.hosts.allSatisfy(HostsFile.isLocal))
        opts.resume = resume
        opts.batchSize = batchSize
        opts.stopAt = stopAt
        opts.continueOnSaveError = continueOnSaveError
        try supervise(opts)
    }

    /// Runs the coordinator, relaunching from the latest checkpoint up to --max-restarts times.
    func supervise(_ options: LaunchOptions) throws {
        var opts = options
        do {
            var attempt = 0
            while true {
                do {
                    try Coordinator(options: opts).run()
                    return
                } catch let e as LaunchError {
                    if case .interrupted = e { throw e }
                    // A full or unwritable disk would fail the same way again.
                    if case .workerFailed(_, _, let detail, _) = e, detail.contains("checkpoint save at step") { throw e }
                    // So would a non-finite loss: training is deterministic in (seed, step).
                    if case .workerFailed(_, _, let detail, _) = e, detail.contains(Trainer.TrainingError.nonFiniteMarker) { throw e }
                    guard attempt < maxRestarts else { throw e }
                    attempt += 1
                    stderrLine("hv-coord: \(e)")
                    stderrLine("hv-coord: restart \(attempt)/\(maxRestarts): relaunching all workers from the latest checkpoint")
                    opts.resume = "auto"
                }
            }
        }
    }

    /// The options every launch shares (training or sampling).
    func launchOptions(hosts: HostsFile, mode: LaunchOptions.Launcher, configPath: String, runDir: String, allLocal: Bool) throws -> LaunchOptions {
        let addr = coordAddress ?? (allLocal ? "127.0.0.1" : ProcessInfo.processInfo.hostName)
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        var opts = LaunchOptions(hosts: hosts, configPath: configPath, runDir: runDir, steps: steps, zeroStage: zero,
                                 launcher: mode, template: template, coordinatorAddress: addr, port: port,
                                 rendezvousTimeout: rendezvousTimeout, collectiveTimeout: collectiveTimeout, bf16Wire: bf16Wire,
                                 workerExecutable: exe, quiet: quiet)
        opts.heartbeatTimeout = heartbeatTimeout
        opts.authenticate = !insecureNoAuth
        switch authMechanism {
        case "auto": opts.authMechanism = .best
        case "curve", "hmac": opts.authMechanism = AuthMechanism(rawValue: authMechanism)!
        default: throw ValidationError("--auth-mechanism must be auto, curve or hmac")
        }
        return opts
    }

    /// `--sample`: every worker runs hv-sample's job in step, context parallel over all ranks.
    func launchSampling(hosts: HostsFile, mode: LaunchOptions.Launcher) throws {
        let gen: GenerateCommand
        do { gen = try GenerateCommand.parse(sampleArguments) } catch {
            throw ValidationError("--sample: hv-sample arguments after `--`: \(GenerateCommand.message(for: error))")
        }
        guard FileManager.default.fileExists(atPath: gen.checkpoint) else { throw ValidationError("--sample: \(gen.checkpoint): no such checkpoint") }
        if config != nil || steps != nil || zero != 0 || resume != nil || batchSize != nil || stopAt != nil || maxRestarts != 0 {
            throw ValidationError("--sample takes its settings from hv-sample's arguments after `--`; --config, --steps, --zero, --resume, --batch-size, --stop-at and --max-restarts are for training")
        }
        var opts = try launchOptions(hosts: hosts, mode: mode, configPath: "", runDir: runDir ?? "checkpoints/sample",
                                     allLocal: hosts.hosts.allSatisfy(HostsFile.isLocal))
        opts.bf16Wire = false   // velocities are assembled exactly
        opts.sampleArguments = sampleArguments
        try Coordinator(options: opts).run()
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "A training worker (started by `hv-coord launch`).", shouldDisplay: false)

    @Option var coordinator: String
    @Option var rank: Int
    @Option var world: Int
    @Option var config = ""
    @Option var zero = 0
    @Option var steps: Int?
    @Option var runDir = "checkpoints/run"
    @Option var bindHost: String?
    @Option var rendezvousTimeout = 60.0
    @Option var collectiveTimeout = 120.0
    @Flag var bf16Wire = false
    @Option var resume: String?
    @Option var batchSize: Int?
    @Option var stopAt: Int?
    @Option var heartbeatTimeout = 30.0
    @Option(help: "The run's CurveZMQ key file (0600, written by the coordinator).") var keyFile: String?
    @Flag var insecureNoAuth = false
    @Flag var continueOnSaveError = false
    @Flag var sample = false
    @Argument(parsing: .postTerminator) var sampleArguments: [String] = []

    func run() throws {
        try runOrExit {
            let o = WorkerOptions(coordinator: coordinator, rank: rank, worldSize: world, configPath: config, zeroStage: zero, steps: steps,
                                  runDir: runDir, bindHost: bindHost, rendezvousTimeout: rendezvousTimeout,
                                  collectiveTimeout: collectiveTimeout, bf16Wire: bf16Wire)
            var opts = o
            opts.resume = resume
            opts.batchSize = batchSize
            opts.stopAt = stopAt
            opts.heartbeatTimeout = heartbeatTimeout
            guard keyFile != nil || insecureNoAuth else {
                throw ValidationError("a worker needs the run's --key-file (or --insecure-no-auth); it is started by `hv-coord launch`")
            }
            opts.keyFile = keyFile
            opts.continueOnSaveError = continueOnSaveError
            // Unbuffered writes: lines reach the coordinator as they are logged.
            let log: @Sendable (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }
            guard sample else { return try runWorker(opts, log: log) }
            let gen = try GenerateCommand.parse(sampleArguments)
            try runWorker(opts, job: { comm in
                let model = try TextToVideo.load(gen.checkpoint)
                let d = model.run.data
                let tokens = model.run.model.videoTokens(latentT: d.frames, latentH: d.height, latentW: d.width)
                guard tokens >= comm.worldSize else {
                    throw ValidationError("\(gen.checkpoint): \(tokens) video tokens cannot be split over \(comm.worldSize) context-parallel ranks")
                }
                if comm.worldSize > 1 {
                    model.dit.contextParallel = ContextParallelAttention(group: PointToPointGroup(parent: comm, members: Array(0..<comm.worldSize)))
                    model.contextParallelSum = { try comm.allReduce($0, count: $1) }
                }
                if comm.rank == 0 {
                    log("sampling context parallel over \(comm.worldSize) rank(s): \(tokens) video tokens at the training size, about \(tokens / comm.worldSize) per rank, ring attention over ZeroMQ")
                }
                try gen.generate(model: model, writeFiles: comm.rank == 0, log: log)
            }, log: log)
        }
    }
}
