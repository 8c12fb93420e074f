import ArgumentParser
import Foundation
import HVTensor
import HVTrain

/// `hv-bench memory`: per-rank resident memory of `hv-coord launch` runs under ZeRO 0-3.
///
/// For each model config and stage, one launch on `--workers` local workers (a few steps, a
/// small synthetic latent, one sample per rank). Two figures per rank:
/// - peak RSS: GNU time's `%M` (the kernel's high-water mark), the worker being wrapped through
///   `--template '/usr/bin/time -o RUN/rss-{rank}.txt -f peak_rss_kb=%M {cmd}'`; it covers the
///   whole life of the process, model construction and sharding included.
/// - training RSS: the largest VmRSS sampled from /proc every 50 ms once the first step has
///   finished (metrics.jsonl is non-empty) until the worker exits: the training steps and the
///   final checkpoint save, not construction.
/// Model-state memory is estimated as RSS(config) - RSS(baseline config) at the same stage, the
/// baseline being a tiny model (same latent, workers and steps) whose own model state is
/// negligible, so what remains is runtime, libraries and small activations.
struct MemoryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory",
        abstract: "Per-rank peak RSS for ZeRO stages 0-3 (hv-coord launch on local workers), beside the model-state formula.")

    @Option(help: "Model config YAML to measure (repeatable).") var config: [String] = ["configs/models/bench-1k.yaml"]
    @Option(help: "Tiny model config used as the baseline (runtime + activations).") var baseline = "configs/models/tiny.yaml"
    @Option(help: "Workers.") var workers = 4
    @Option(help: "Training steps per launch (RSS grows with steps today: see BENCHMARKS.md).") var steps = 2
    @Option(help: "ZeRO stages (comma-separated).") var stages = "0,1,2,3"
    @Option(help: "Latent T x H x W of the synthetic samples.") var latent = "4x8x8"
    @Option(help: "Directory for the runs (default: a new one under the temp directory).") var dir: String?
    @Flag(help: "Keep the run directories afterwards.") var keep = false

    struct Measure { var peakKB: [Int]; var trainKB: [Int] }

    func run() throws {
        try runOrExit {
            guard FileManager.default.isExecutableFile(atPath: "/usr/bin/time") else {
                throw ValidationError("/usr/bin/time is missing (Debian: apt-get install time)")
            }
            let dims = latent.split(separator: "x").compactMap { Int($0) }
            guard dims.count == 3 else { throw ValidationError("--latent must look like 4x8x8") }
            let stageList = stages.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !stageList.isEmpty, stageList.allSatisfy({ (0...3).contains($0) }) else { throw ValidationError("--stages: e.g. 0,1,2,3") }
            let fm = FileManager.default
            let work = dir ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("hv-memory-bench-\(getpid())")
            try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
            defer { if !keep { try? fm.removeItem(atPath: work) } }
            let hosts = work + "/hosts"
            try "localhost slots=\(workers)\n".write(toFile: hosts, atomically: true, encoding: .utf8)
            let coord = benchSiblingExecutable("hv-coord")
            let N = Double(workers), MiB = 1048576.0

            var table: [String: [Int: Measure]] = [:]
            var psi: [String: Int] = [:]
            for model in [baseline] + config {
                let name = ((model as NSString).lastPathComponent as NSString).deletingPathExtension
                let runCfg = work + "/\(name).yaml"
                try runConfigText(model: URL(fileURLWithPath: model).standardizedFileURL.path, dims: dims)
                    .write(toFile: runCfg, atomically: true, encoding: .utf8)
                psi[model] = try Trainer(config: try RunConfig.load(path: runCfg)).engine.units.reduce(0) { $0 + $1.count }
                for s in stageList {
                    let runDir = work + "/\(name)-zero\(s)"
                    stderrLine("hv-bench memory: \(name), ZeRO \(s), \(workers) workers ...")
                    let m = try launch(coord: coord, hosts: hosts, runCfg: runCfg, runDir: runDir, stage: s)
                    table[model, default: [:]][s] = m
                }
            }

            print("per-rank resident memory, \(workers) workers on this machine, \(steps) steps, latent \(latent), 1 sample per rank, fp32")
            print("model-state formula (4 weights + 4 grads + 8 Adam bytes/param): 0: 16Ψ  1: 8Ψ+8Ψ/N  2: 4Ψ+12Ψ/N  3: 16Ψ/N")
            let b = table[baseline] ?? [:]
            print(String(format: "baseline %@: Ψ = %@ parameters (DiT + text encoder)", baseline as NSString, psi[baseline]!.formatted() as NSString))
            for s in stageList {
                if let m = b[s] {
                    print(String(format: "  ZeRO %d  peak RSS max %7.1f MiB  training RSS max %7.1f MiB", s,
                                 Double(m.peakKB.max()!) / 1024, Double(m.trainKB.max() ?? 0) / 1024))
                }
            }
            for model in config {
                let P = Double(psi[model]!)
                print(String(format: "\n%@: Ψ = %@ parameters (DiT + text encoder); 16Ψ/N = %.1f MiB", model as NSString,
                             psi[model]!.formatted() as NSString, 16 * P / N / MiB))
                print("  stage   formula    peak RSS (max rank)   peak - baseline   ratio    training RSS   training - baseline   ratio")
                for s in stageList {
                    guard let m = table[model]?[s], let base = b[s] else { continue }
                    let formula = [16 * P, (8 + 8 / N) * P, (4 + 12 / N) * P, 16 * P / N][s]
                    let peak = Double(m.peakKB.max()!) * 1024, train = Double(m.trainKB.max() ?? 0) * 1024
                    let dPeak = peak - Double(base.peakKB.max()!) * 1024
                    let dTrain = train - Double(base.trainKB.max() ?? 0) * 1024
                    print(String(format: "  ZeRO %d  %7.1f MiB   %7.1f MiB          %7.1f MiB       %.2f     %7.1f MiB      %7.1f MiB          %.2f",
                                 s, formula / MiB, peak / MiB, dPeak / MiB, dPeak / formula, train / MiB, dTrain / MiB, dTrain / formula))
                }
                print("  per-rank peaks (MiB): " + stageList.compactMap { s in
                    table[model]?[s].map { "ZeRO \(s): " + $0.peakKB.map { String(format: "%.0f", Double($0) / 1024) }.joined(separator: "/") }
                }.joined(separator: "   "))
            }
            print("\nratio = (RSS - baseline RSS) / formula; target for ZeRO 3: <= 1.15")
        }
    }

    func runConfigText(model: String, dims: [Int]) -> String {
        """
        version: 1
        model: \(model)
        text_encoder:
          vocab_size: 512
          max_tokens: 8
        data:
          kind: synthetic-latents
          count: \(4 * workers)
          frames: \(dims[0])
          height: \(dims[1])
          width: \(dims[2])
          seed: 0
        train:
          steps: \(steps)
          batch_size: \(workers)
          lr: 0.0001
          seed: 0
          log_every: 1

        """
    }

    /// One launch; returns each rank's peak RSS (GNU time) and largest VmRSS sampled after step 1.
    func launch(coord: String, hosts: String, runCfg: String, runDir: String, stage: Int) throws -> Measure {
        let fm = FileManager.default
        try? fm.removeItem(atPath: runDir)
        try fm.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        let template = "/usr/bin/time -o \(runDir)/rss-{rank}.txt -f peak_rss_kb=%M {cmd}"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: coord)
        p.arguments = ["launch", "--nodes", hosts, "--config", runCfg, "--run-dir", runDir, "--zero", "\(stage)", "--quiet",
                       "--template", template]
        p.standardInput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        var trainKB = [Int](repeating: 0, count: workers)
        var pids: [Int32: Int] = [:]   // worker pid -> rank
        while p.isRunning {
            if pids.count < workers { pids = findWorkers(runDir: runDir) }
            let started = ((try? Data(contentsOf: URL(fileURLWithPath: runDir + "/metrics.jsonl"))) ?? Data()).contains(0x0A)
            if started {
                for (pid, rank) in pids { if let kb = vmRSS(pid) { trainKB[rank] = max(trainKB[rank], kb) } }
            }
            usleep(50_000)
        }
        p.waitUntilExit()
        guard p.terminationReason == .exit && p.terminationStatus == 0 else {
            let how = p.terminationReason == .exit ? "exit \(p.terminationStatus)" : "signal \(p.terminationStatus)"
            throw ValidationError("hv-coord launch (ZeRO \(stage)) failed with \(how); logs in \(runDir)/logs (use --keep)")
        }
        let peaks = try (0..<workers).map { r -> Int in
            let text = (try? String(contentsOfFile: runDir + "/rss-\(r).txt", encoding: .utf8)) ?? ""
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("peak_rss_kb=") }),
                  let kb = Int(line.dropFirst("peak_rss_kb=".count)) else {
                throw ValidationError("no peak_rss_kb in \(runDir)/rss-\(r).txt")
            }
            return kb
        }
        return Measure(peakKB: peaks, trainKB: trainKB)
    }

    /// Worker processes of this run (argv contains `worker` and `--run-dir RUN_DIR`), by rank.
    func findWorkers(runDir: String) -> [Int32: Int] {
        var out: [Int32: Int] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let raw = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(entry)/cmdline")) else { continue }
            let argv = raw.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            guard argv.count > 2, argv[0].hasSuffix("hv-coord"), argv[1] == "worker",
                  let i = argv.firstIndex(of: "--run-dir"), i + 1 < argv.count, argv[i + 1] == runDir,
                  let j = argv.firstIndex(of: "--rank"), j + 1 < argv.count, let rank = Int(argv[j + 1]) else { continue }
            out[pid] = rank
        }
        return out
    }

    func vmRSS(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
}
