import Foundation
import HVCheckpoint
import HVTrain
#if canImport(Glibc)
import Glibc
#endif

/// What a sweep records about a planned run (DIR/sweep.json), enough to print the progress
/// table without the family file.
public struct SweepRunRecord: Codable, Sendable, Equatable {
    public var name: String
    public var member: String
    public var budget: Double
    public var params: Int
    public var steps: Int
    public var batch: Int
    public var flops: Double
    public var tokens: Double

    public init(_ r: PlannedRun) {
        name = r.name; member = r.member; budget = r.budget; params = r.params; steps = r.steps; batch = r.batch
        flops = r.flops; tokens = r.tokens
    }
}

/// DIR/sweep.json: the latest plan of a sweep directory.
public struct SweepManifest: Codable, Sendable {
    public var version = 1
    public var family: String
    public var budgets: [Double]
    public var nodes: String
    public var runs: [SweepRunRecord]

    public static func read(dir: String) throws -> SweepManifest {
        let p = dir + "/sweep.json"
        guard let d = FileManager.default.contents(atPath: p) else { throw ScalingError.unreadable(file: p, reason: "no sweep here (run `hv-scaling sweep` first)") }
        do { return try JSONDecoder().decode(SweepManifest.self, from: d) } catch { throw ScalingError.results(file: p, message: "\(error)") }
    }
}

public enum RunStatus: String, Sendable {
    /// result.json written (trained and evaluated).
    case done
    /// An `hv-coord launch` for it is alive now.
    case running
    /// Started before but not finished: the next sweep resumes it from its latest checkpoint.
    case interrupted
    case pending
}

public struct SweepOptions: Sendable {
    public var family: ScalingFamily
    public var budgets: [Double]
    public var nodes: String
    public var out: String
    /// The hv-coord executable (default: next to the running executable).
    public var coordExecutable: String
    public var zero = 0
    /// Passed to every `hv-coord launch` verbatim (e.g. --launcher ssh).
    public var launchArgs: [String] = []
    public var sizesPerBudget: Int? = nil
    public var tokensPerParam = 20.0
    public var minSteps = 1
    public var checkpointEvery: Int? = nil
    /// Held-out samples for each run's eval loss (0: use the final training loss).
    public var evalSamples = 64

    public init(family: ScalingFamily, budgets: [Double], nodes: String, out: String, coordExecutable: String) {
        self.family = family; self.budgets = budgets; self.nodes = nodes; self.out = out; self.coordExecutable = coordExecutable
    }
}

/// Runs an IsoFLOP sweep: every planned run through `hv-coord launch` (one at a time, each on
/// all the hosts file's slots), its loss curve in DIR/runs/NAME/metrics.jsonl, its final losses
/// in DIR/runs/NAME/result.json and all finished runs in DIR/results.csv.
///
/// Restartable: a run with result.json is skipped; any other started run is launched with
/// `--resume auto` (from its latest good checkpoint, or fresh when it has none). SIGINT/SIGTERM
/// are forwarded once to the running hv-coord, whose workers save a checkpoint and stop; the
/// sweep then stops with `ScalingError.interrupted`.
public final class Sweep: @unchecked Sendable {
    public let o: SweepOptions
    let log: (String) -> Void
    nonisolated(unsafe) static var interrupts = 0

    public init(options: SweepOptions, log: @escaping (String) -> Void) {
        o = options
        self.log = log
    }

    public func plan() throws -> IsoFLOPPlan {
        try IsoFLOPPlanner.plan(family: o.family, budgets: o.budgets, sizesPerBudget: o.sizesPerBudget, tokensPerParam: o.tokensPerParam,
                                minSteps: o.minSteps, checkpointEvery: o.checkpointEvery)
    }

    public static func runDir(_ out: String, _ name: String) -> String { out + "/runs/" + name }

    public static func status(out: String, run: String) -> RunStatus {
        let dir = runDir(out, run), fm = FileManager.default
        if fm.fileExists(atPath: dir + "/result.json") { return .done }
        if let s = try? String(contentsOfFile: dir + "/launch.pid", encoding: .utf8), let pid = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)),
           kill(pid, 0) == 0 { return .running }
        if fm.fileExists(atPath: dir + "/metrics.jsonl") || fm.fileExists(atPath: dir + "/checkpoints") { return .interrupted }
        return .pending
    }

    public static func readResult(out: String, run: String) -> ScalingResult? {
        guard let d = FileManager.default.contents(atPath: runDir(out, run) + "/result.json") else { return nil }
        return try? JSONDecoder().decode(ScalingResult.self, from: d)
    }

    /// All finished runs under DIR/runs (including runs of earlier plans).
    public static func collectResults(out: String) -> [ScalingResult] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: out + "/runs")) ?? []
        return names.sorted().compactMap { readResult(out: out, run: $0) }
    }

    /// The progress table: one line per run with its state and loss.
    public static func progressTable(out: String, runs: [SweepRunRecord]) -> String {
        var lines = [rpad("run", 22) + " " + lpad("params", 9) + " " + lpad("budget", 8) + " " + lpad("steps", 7) + " " + lpad("PF", 9) + "  "
                     + rpad("status", 16) + lpad("loss", 9)]
        var counts: [RunStatus: Int] = [:]
        for r in runs {
            let st = status(out: out, run: r.name)
            counts[st, default: 0] += 1
            var extra = ""
            if st == .interrupted, let last = readLossCurve(runDir: runDir(out, r.name)).last?.step { extra = " @\(last)" }
            let loss = readResult(out: out, run: r.name).map { String(format: "%.5f", $0.loss) } ?? "-"
            lines.append(rpad(r.name, 22) + " " + lpad(formatCount(Double(r.params)), 9) + " " + lpad(IsoFLOPPlanner.budgetLabel(r.budget), 8) + " "
                         + lpad("\(r.steps)", 7) + " " + lpad(String(format: "%.3g", r.flops / 1e15), 9) + "  " + rpad(st.rawValue + extra, 16) + lpad(loss, 9))
        }
        let summary = [RunStatus.done, .running, .interrupted, .pending].map { "\(counts[$0] ?? 0) \($0.rawValue)" }.joined(separator: ", ")
        lines.append("\(runs.count) runs: \(summary)")
        return lines.joined(separator: "\n")
    }

    /// Runs every pending or interrupted run; returns all finished results.
    @discardableResult
    public func run(progress: (String) -> Void) throws -> [ScalingResult] {
        let fm = FileManager.default
        let hosts = try HostsFile.load(path: o.nodes)
        let plan = try plan()
        guard !plan.runs.isEmpty else { throw ScalingError.invalidArgument("the plan is empty: every member needs fewer than --min-steps steps at these budgets") }
        for r in plan.runs where r.batch % (hosts.worldSize * r.run.train.grad_accum) != 0 {
            throw ScalingError.invalidArgument("run \(r.name): batch \(r.batch) is not divisible by \(hosts.worldSize) workers x grad_accum \(r.run.train.grad_accum)")
        }
        guard fm.isExecutableFile(atPath: o.coordExecutable) else {
            throw ScalingError.invalidArgument("hv-coord not found at \(o.coordExecutable) (build it, or pass --coord PATH)")
        }
        try fm.createDirectory(atPath: o.out + "/runs", withIntermediateDirectories: true)
        let lock = o.out + "/sweep.lock"
        if let s = try? String(contentsOfFile: lock, encoding: .utf8), let pid = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)),
           pid != getpid(), kill(pid, 0) == 0 {
            throw ScalingError.invalidArgument("another sweep (pid \(pid)) is running in \(o.out); wait for it or stop it first")
        }
        try "\(getpid())\n".write(toFile: lock, atomically: true, encoding: .utf8)
        defer { try? fm.removeItem(atPath: lock) }

        let records = plan.runs.map(SweepRunRecord.init)
        let manifest = SweepManifest(family: URL(fileURLWithPath: o.family.path).standardizedFileURL.path, budgets: plan.budgets,
                                     nodes: o.nodes, runs: records)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(manifest).write(to: URL(fileURLWithPath: o.out + "/sweep.json"), options: .atomic)
        for s in plan.skipped { log("hv-scaling: skipping \(s.member) at C=\(IsoFLOPPlanner.budgetLabel(s.budget)): \(s.reason)") }
        progress(Sweep.progressTable(out: o.out, runs: records))

        Sweep.interrupts = 0
        signal(SIGINT) { _ in Sweep.interrupts += 1 }
        signal(SIGTERM) { _ in Sweep.interrupts += 1 }
        defer { signal(SIGINT, SIG_DFL); signal(SIGTERM, SIG_DFL) }

        for (i, r) in plan.runs.enumerated() {
            let dir = Sweep.runDir(o.out, r.name)
            let st = Sweep.status(out: o.out, run: r.name)
            if st == .done { continue }
            if st == .running { throw ScalingError.invalidArgument("run \(r.name) is being trained by another process (\(dir)/launch.pid)") }
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let configPath = dir + "/config.yaml"
            let yaml = "# written by hv-scaling sweep: family \(o.family.name), member \(r.member), budget \(IsoFLOPPlanner.budgetLabel(r.budget)) FLOPs\n" + r.run.yaml()
            if let old = try? String(contentsOfFile: configPath, encoding: .utf8), old != yaml, st == .interrupted {
                throw ScalingError.invalidArgument("run \(r.name): its config changed since it started (\(configPath)); remove \(dir) to restart it")
            }
            try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
            let t0 = Date()
            if try trainedCheckpoint(dir, steps: r.steps) == nil {
                log("hv-scaling: [\(i + 1)/\(plan.runs.count)] \(st == .interrupted ? "resuming" : "launching") \(r.name): \(formatCount(Double(r.params))) params, \(r.steps) steps x batch \(r.batch)")
                let args = ["launch", "--nodes", o.nodes, "--config", configPath, "--run-dir", dir, "--zero", "\(o.zero)", "--quiet",
                            "--resume", "auto"] + o.launchArgs
                let status = try launch(args, log: dir + "/launch.log", pidFile: dir + "/launch.pid")
                if Sweep.interrupts > 0 {
                    throw ScalingError.interrupted("sweep interrupted during \(r.name) (it saved a checkpoint if it could); rerun the same command to resume")
                }
                if status != 0 { throw ScalingError.launchFailed(run: r.name, status: status, log: dir + "/launch.log") }
            }
            guard let ckpt = try trainedCheckpoint(dir, steps: r.steps) else {
                throw ScalingError.launchFailed(run: r.name, status: 0, log: dir + "/launch.log")
            }
            let curve = readLossCurve(runDir: dir)
            let train = finalTrainLoss(curve)
            let eval = o.evalSamples > 0 ? try HeldOutEval.loss(run: r.run, checkpoint: ckpt, samples: o.evalSamples) : nil
            guard let loss = eval ?? train else { throw ScalingError.launchFailed(run: r.name, status: 0, log: dir + "/launch.log") }
            let seconds = readStepSeconds(runDir: dir)
            let result = ScalingResult(run: r.name, member: r.member, budget: r.budget, params: Double(r.params), tokens: r.tokens, flops: r.flops,
                                       loss: loss, train_loss: train, eval_loss: eval, steps: r.steps, batch: r.batch,
                                       flops_per_sample: r.cost.flops, seconds: seconds)
            try enc.encode(result).write(to: URL(fileURLWithPath: dir + "/result.json"), options: .atomic)
            try ResultsCSV.write(Sweep.collectResults(out: o.out), to: o.out + "/results.csv")
            log("hv-scaling: \(r.name) done in " + String(format: "%.1fs: loss %.5f (train %.5f)", Date().timeIntervalSince(t0), loss, train ?? .nan))
            progress(Sweep.progressTable(out: o.out, runs: records))
        }
        let all = Sweep.collectResults(out: o.out)
        try ResultsCSV.write(all, to: o.out + "/results.csv")
        return all
    }

    /// The run's latest good checkpoint if it has reached `steps`.
    func trainedCheckpoint(_ dir: String, steps: Int) throws -> String? {
        guard FileManager.default.fileExists(atPath: dir + "/checkpoints"),
              let c = try? Checkpointing.resolve("auto", runDir: dir, log: { _ in }),
              let m = try? Checkpointing.verify(c), m.step >= steps else { return nil }
        return c
    }

    /// Starts hv-coord in its own process group (a terminal's Ctrl-C reaches only the sweep,
    /// which forwards it once, so hv-coord sees one request to save and stop, not two),
    /// with stdout and stderr appended to `log`, and waits for it.
    func launch(_ args: [String], log logPath: String, pidFile: String) throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attr, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([o.coordExecutable] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, o.coordExecutable, &actions, &attr, argv, environ)
        guard rc == 0 else { throw ScalingError.invalidArgument("cannot start \(o.coordExecutable): \(String(cString: strerror(rc)))") }
        try "\(pid)\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
        var forwarded = 0
        var status: Int32 = 0
        while true {
            let w = waitpid(pid, &status, WNOHANG)
            if w == pid { break }
            if w < 0 && errno != EINTR { throw ScalingError.invalidArgument("waitpid failed: \(String(cString: strerror(errno)))") }
            if Sweep.interrupts > forwarded {
                forwarded = Sweep.interrupts
                log(forwarded == 1 ? "hv-scaling: interrupted — asking hv-coord to save a checkpoint and stop (interrupt again to stop at once)"
                                   : "hv-scaling: interrupted again — stopping hv-coord now")
                kill(pid, SIGTERM)
            }
            usleep(50_000)
        }
        // WIFEXITED / WEXITSTATUS (macros Swift cannot import).
        if status & 0x7f == 0 { return (status >> 8) & 0xff }
        return 128 + (status & 0x7f)
    }
}

/// Total training seconds of a run (sum of metrics.jsonl step_s, the last entry of each step).
public func readStepSeconds(runDir: String) -> Double? {
    guard let text = try? String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8) else { return nil }
    var byStep: [Int: Double] = [:]
    for line in text.split(separator: "\n") {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let step = obj["step"] as? Int, let s = obj["step_s"] as? Double else { continue }
        byStep[step] = s
    }
    return byStep.isEmpty ? nil : byStep.values.reduce(0, +)
}

/// 1.23M, 6.47B, 35.0K: a count with an SI suffix.
public func formatCount(_ x: Double) -> String {
    let a = abs(x)
    if a >= 1e12 { return String(format: "%.3gT", x / 1e12) }
    if a >= 1e9 { return String(format: "%.3gB", x / 1e9) }
    if a >= 1e6 { return String(format: "%.3gM", x / 1e6) }
    if a >= 1e3 { return String(format: "%.3gK", x / 1e3) }
    return String(format: "%.3g", x)
}
