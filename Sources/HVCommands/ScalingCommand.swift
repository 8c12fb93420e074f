import ArgumentParser
import Foundation
import HVModel
import HVScaling
import HVTrain

/// `hv-scaling`: IsoFLOP sweeps over a model family, scaling-law fits and recommendations.
public struct ScalingCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-scaling",
        abstract: "Scaling-law sweeps, fits and compute-optimal model sizes for HunyuanVideo DiTs.",
        discussion: """
        Plan:       hv-scaling plan --family configs/scaling/local-family.yaml --budgets 3e11,1e12
        Sweep:      hv-scaling sweep --family configs/scaling/local-family.yaml --budgets 3e11,1e12,3e12 --nodes cluster/hosts.local --out sweeps/local
        Fit:        hv-scaling fit sweeps/local            (or --results results.csv with params,tokens,flops,loss)
        Recommend:  hv-scaling recommend --fit sweeps/local --compute 1e13
        """,
        subcommands: [ScalingPlanCommand.self, ScalingSweepCommand.self, ScalingStatusCommand.self, ScalingFitCommand.self,
                      ScalingRecommendCommand.self])
    public init() {}
}

struct ScalingPlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Each member's parameters and training FLOPs per sample, and the IsoFLOP grid for --budgets.")

    @Option(help: "Family file (configs/scaling/*-family.yaml).") var family: String
    @Option(help: "Compute budgets in FLOPs, comma-separated (e.g. 1e12,3e12).") var budgets: String?
    @Option(help: "Keep the K members nearest the optimum per budget (by tokens per parameter).") var sizesPerBudget: Int?
    @Option(help: "Tokens per parameter at the assumed optimum (for --sizes-per-budget).") var tokensPerParam = 20.0
    @Option(help: "Skip members that would train for fewer steps.") var minSteps = 1

    func run() throws {
        try runOrExit {
            let f = try ScalingFamily.load(path: family)
            let d = f.base.data
            let cost0 = SampleCost(run: f.base)
            print("family      \(f.name) (\(family)), base run \(f.basePath)")
            if !f.rule.isEmpty { print("shape rule  \(f.rule)") }
            print(String(format: "sample      latent %dx%dx%d (image ratio %.2f) -> %.0f video + %d text tokens", d.frames, d.height, d.width, d.image_ratio,
                         cost0.videoTokens, cost0.textTokens))
            print("")
            let header = ["member", "hidden", "heads", "double", "single", "params", "FLOPs/sample", "6N·tokens", "C/6ND", "batch"]
            let widths = [14, 7, 6, 7, 7, 16, 13, 13, 6, 6]
            func row(_ c: [String]) -> String { zip(c, widths).enumerated().map { $0 == 0 ? $1.0.padding(toLength: $1.1, withPad: " ", startingAt: 0) : String(repeating: " ", count: max(0, $1.1 - $1.0.count)) + $1.0 }.joined(separator: " ") }
            print(row(header))
            var models: [(String, DiTConfig, Int)] = f.bySize.map { ($0.name, $0.run.model, $0.run.train.batch_size) }
            if let t = f.target { models.append((t.name + " (target)", t.model, f.base.train.batch_size)) }
            for (name, m, batch) in models {
                var run = f.base
                run.model = m
                let c = SampleCost(run: run)
                let six = SampleCost.sixND(params: m.parameterCount, tokens: c.tokens)
                print(row([name, "\(m.hidden_size)", "\(m.heads_num)", "\(m.mm_double_blocks_depth)", "\(m.mm_single_blocks_depth)",
                           m.parameterCount.formatted(), String(format: "%.4g", c.flops), String(format: "%.4g", six),
                           String(format: "%.2f", c.flops / six), "\(batch)"]))
            }
            guard let budgets else { return }
            let plan = try IsoFLOPPlanner.plan(family: f, budgets: try parseBudgets(budgets), sizesPerBudget: sizesPerBudget,
                                               tokensPerParam: tokensPerParam, minSteps: minSteps)
            print("\nIsoFLOP grid (samples = C / FLOPs per sample, steps = samples / batch):")
            let gw = [22, 9, 12, 12, 10, 14, 10]
            func grow(_ c: [String]) -> String { zip(c, gw).enumerated().map { $0 == 0 ? $1.0.padding(toLength: $1.1, withPad: " ", startingAt: 0) : String(repeating: " ", count: max(0, $1.1 - $1.0.count)) + $1.0 }.joined(separator: " ") }
            print(grow(["run", "C", "params", "samples", "steps", "tokens", "D/N"]))
            for r in plan.runs {
                print(grow([r.name, IsoFLOPPlanner.budgetLabel(r.budget), r.params.formatted(), r.samples.formatted(), r.steps.formatted(),
                            String(format: "%.4g", r.tokens), String(format: "%.3g", r.tokens / Double(r.params))]))
            }
            for s in plan.skipped { print("skipped \(s.member) at C=\(IsoFLOPPlanner.budgetLabel(s.budget)): \(s.reason)") }
            let total = plan.runs.map(\.flops).reduce(0, +)
            print(String(format: "%d runs, %.4g FLOPs in total", plan.runs.count, total))
        }
    }
}

struct ScalingSweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Train an IsoFLOP grid through `hv-coord launch`, record losses, resume where it stopped.",
        discussion: """
        DIR/runs/NAME/ holds each run (config.yaml, launch.log, metrics.jsonl, checkpoints, result.json); DIR/results.csv
        every finished run (params,tokens,flops,loss,...). Rerun the same command after an interruption: finished runs are
        skipped and interrupted ones resume from their latest checkpoint. Ctrl-C asks the running hv-coord to save and stop.
        """)

    @Option(help: "Family file (configs/scaling/*-family.yaml).") var family: String
    @Option(help: "Compute budgets in FLOPs, comma-separated (e.g. 1e12,3e12,1e13).") var budgets: String
    @Option(help: "Hosts file for hv-coord launch (`HOST slots=N` per line).") var nodes: String
    @Option(help: "Sweep directory.") var out: String
    @Option(help: "ZeRO stage for every run.") var zero = 0
    @Option(help: "Keep the K members nearest the optimum per budget (by tokens per parameter); default all.") var sizesPerBudget: Int?
    @Option(help: "Tokens per parameter at the assumed optimum (for --sizes-per-budget).") var tokensPerParam = 20.0
    @Option(help: "Skip members that would train for fewer steps.") var minSteps = 1
    @Option(help: "Checkpoint every N steps (default: the base config's, else max(50, steps/4)).") var checkpointEvery: Int?
    @Option(help: "Held-out samples for each run's eval loss (0 = use the mean training loss of the last steps).") var evalSamples = 64
    @Option(help: "The hv-coord executable (default: next to hv-scaling).") var coord: String?
    @Option(parsing: .singleValue, help: "Extra argument for every hv-coord launch (repeatable), e.g. --launch-arg=--launcher --launch-arg=ssh.")
    var launchArg: [String] = []

    func run() throws {
        try runOrExit {
            let f = try ScalingFamily.load(path: family)
            let exe = coord ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("hv-coord").path
            var o = SweepOptions(family: f, budgets: try parseBudgets(budgets), nodes: nodes, out: out, coordExecutable: exe)
            o.zero = zero; o.sizesPerBudget = sizesPerBudget; o.tokensPerParam = tokensPerParam; o.minSteps = minSteps
            o.checkpointEvery = checkpointEvery; o.evalSamples = evalSamples; o.launchArgs = launchArg
            let t0 = Date()
            let results = try Sweep(options: o, log: stderrLine).run { FileHandle.standardOutput.write(Data(($0 + "\n\n").utf8)) }
            print(String(format: "hv-scaling: sweep complete: %d finished runs in %@/results.csv (%.1fs); fit with `hv-scaling fit %@`",
                         results.count, out, Date().timeIntervalSince(t0), out))
        }
    }
}

struct ScalingStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "The progress table of a sweep directory.")
    @Argument(help: "Sweep directory.") var dir: String

    func run() throws {
        try runOrExit { print(Sweep.progressTable(out: dir, runs: try SweepManifest.read(dir: dir).runs)) }
    }
}

struct ScalingFitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fit",
        abstract: "Fit L(C), N_opt(C), D_opt(C) and L(N, D) with bootstrap intervals; write fit.json, a report and plots.")

    @Argument(help: "Sweep directory (reads DIR/results.csv and the runs' loss curves).") var dir: String?
    @Option(help: "A results CSV with columns params,tokens,flops,loss (budget optional) instead of a sweep directory.") var results: String?
    @Option(help: "Where to write fit.json, fit-report.txt, scaling.svg and scaling.png (default: DIR, or the CSV's directory).") var out: String?
    @Option(help: "Bootstrap resamples for L(C) and N_opt/D_opt.") var bootstrap = 1000
    @Option(help: "Bootstrap resamples for the parametric fit (each an L-BFGS refit).") var parametricBootstrap = 200
    @Option(help: "Seed of the bootstrap.") var seed: UInt64 = 0
    @Option(help: "Fit each IsoFLOP parabola to the K sizes around the budget's best run (default: all sizes).") var profileSizes: Int?
    @Flag(help: "Skip the SVG and PNG plots.") var noPlot = false

    func run() throws {
        try runOrExit {
            guard (dir == nil) != (results == nil) else { throw ValidationError("give a sweep directory or --results FILE (one of them)") }
            let csv = results ?? dir! + "/results.csv"
            let outDir = out ?? dir ?? (csv as NSString).deletingLastPathComponent
            let rows = try ResultsCSV.read(path: csv)
            var o = FitOptions()
            o.bootstrap = bootstrap; o.parametricBootstrap = parametricBootstrap; o.seed = seed; o.profileWindow = profileSizes
            if let k = profileSizes, k < 3 { throw ValidationError("--profile-sizes must be >= 3 (a parabola needs three sizes)") }
            let familyPath = dir.flatMap { try? SweepManifest.read(dir: $0).family }
            let fit = try ScalingAnalysis.fit(rows, source: csv, options: o, family: familyPath)
            try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
            try FitReport.writeJSON(fit, to: outDir + "/fit.json")
            let report = FitReport.text(fit)
            try report.write(toFile: outDir + "/fit-report.txt", atomically: true, encoding: .utf8)
            print(report)
            if !noPlot {
                let curves = dir.map { loadLossCurves(out: $0, results: rows) } ?? []
                let figure = ScalingPlot.figure(fit: fit, rows: rows, curves: curves, title: "hv-scaling: \(csv)")
                try figure.svg.write(toFile: outDir + "/scaling.svg", atomically: true, encoding: .utf8)
                try figure.png().write(to: URL(fileURLWithPath: outDir + "/scaling.png"), options: .atomic)
            }
            stderrLine("hv-scaling: wrote \(outDir)/fit.json, fit-report.txt" + (noPlot ? "" : ", scaling.svg, scaling.png"))
        }
    }
}

struct ScalingRecommendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recommend", abstract: "Compute-optimal parameters and tokens for a budget, with intervals, and the nearest family member.")

    @Option(help: "A fit directory (with fit.json) or a fit.json file.") var fit: String
    @Option(help: "Compute budget in FLOPs (e.g. 7e22).") var compute: Double
    @Option(help: "Family to pick the nearest member from (default: the sweep's family recorded in fit.json).") var family: String?

    func run() throws {
        try runOrExit {
            var isDir: ObjCBool = false
            let path = FileManager.default.fileExists(atPath: fit, isDirectory: &isDir) && isDir.boolValue ? fit + "/fit.json" : fit
            let r = try FitReport.readJSON(path)
            let fam = try (family ?? r.family).map { try ScalingFamily.load(path: $0) }
            print(Recommender.text(try Recommender.recommend(fit: r, compute: compute, family: fam), fit: r), terminator: "")
        }
    }
}
