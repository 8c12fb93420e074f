import ArgumentParser
import Foundation
import HVModel
import HVTensor
import HVTrain

/// `hv-coord`: plans, trains and (with the distributed runtime) launches runs.
public struct CoordCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-coord",
        abstract: "Plan and run HunyuanVideo DiT training.",
        discussion: """
        Quick start:  hv-coord train --config configs/runs/tiny.yaml
        Model sizes:  hv-coord plan --config configs/models/hyvideo-t2-13b.yaml
        """,
        subcommands: [TrainCommand.self, PlanCommand.self, DumpConfigCommand.self])
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

    @Option(help: "Run config (YAML), e.g. configs/runs/tiny.yaml.") var config: String
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
            let trainer = Trainer(config: cfg)
            stderrLine("hv: training \(cfg.model.parameterCount.formatted()) DiT parameters + \(trainer.textEncoder.parameterCount) text-encoder parameters for \(cfg.train.steps) steps (batch \(cfg.train.batch_size), OpenBLAS \(BLAS.coreName) x\(BLAS.threads))")
            var csv = "step,loss,grad_norm,lr\n"
            var window: [Trainer.StepStats] = []
            let start = Date()
            for _ in 0..<cfg.train.steps {
                let s = trainer.trainStep()
                csv += "\(s.step),\(s.loss),\(s.gradNorm),\(s.lr)\n"
                window.append(s)
                if (s.step + 1) % cfg.train.log_every == 0 || s.step + 1 == cfg.train.steps {
                    let secs = window.map(\.seconds).reduce(0, +)
                    let tokens = window.map(\.videoTokens).reduce(0, +)
                    let meanLoss = window.map(\.loss).reduce(0, +) / Float(window.count)
                    let eta = Double(cfg.train.steps - s.step - 1) * secs / Double(window.count)
                    print(String(format: "step %5d/%d  loss %.4f  grad %.3f  lr %.2e  %.0f tok/s  eta %.0fs",
                                 s.step + 1, cfg.train.steps, meanLoss, s.gradNorm, s.lr, Double(tokens) / secs, eta))
                    window.removeAll()
                }
            }
            stderrLine(String(format: "hv: done in %.1fs", Date().timeIntervalSince(start)))
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
    @Option(help: "Text tokens per sample.") var textTokens = 256
    @Option(help: "Data-parallel ranks for the per-rank memory table.") var ranks = 8

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
            let P = Double(n)
            let R = Double(ranks)
            // fp32 throughout: 4 bytes weights + 4 grads + 8 Adam moments per parameter.
            print(String(format: "model states     fp32 weights 4 + grads 4 + Adam 8 = 16 bytes/param -> %.1f GiB replicated", 16 * P / gib))
            print(String(format: "per rank (%d)     ZeRO-1 (8 + 8/N)Ψ: %.1f GiB   ZeRO-2 (4 + 12/N)Ψ: %.1f GiB   ZeRO-3 16Ψ/N: %.1f GiB",
                         ranks, (8 + 8 / R) * P / gib, (4 + 12 / R) * P / gib, 16 * P / R / gib))
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
