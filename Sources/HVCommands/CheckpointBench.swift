import ArgumentParser
import Foundation
import HVCheckpoint
import HVTensor
import HVTrain

/// `hv-bench checkpoint`: save and load throughput of hv's sharded HDF5 checkpoints beside the
/// disk's raw sequential write and read (dd) for the same number of bytes.
///
/// Save: a real `hv-coord launch` on `--workers` local workers (hosts file `localhost slots=W`)
/// of a run config made here (the given model, a small synthetic latent, batch = workers,
/// `--saves` steps with a checkpoint after each); the figure is rank 0's log line
/// "saved checkpoint ... (X.XXs)", i.e. the whole collective `Checkpointing.save`: directory,
/// barriers, every rank writing + fsyncing its shard file in parallel, manifest, rename, fsyncs.
/// Load, with the page cache dropped first (when root):
/// - `resume`: what the workers of a `--resume` with the saved world size read — W processes
///   (`hv-bench checkpoint-shard-read`) started together, each reading and checksumming its own
///   shard file (`Checkpointing.readOwnShard`); the figure is the span from the first read's
///   start to the last one's end. (The all-gather of replicated parts that follows is network.)
/// - `load`: `Checkpointing.load` into a fresh one-process Trainer — a resume on another world
///   size, which reads every shard file (by hyperslab, only the ranges it keeps: here all).
/// - `verify`: what the coordinator does on `--resume`: reads and checksums every dataset.
struct CheckpointBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Sharded HDF5 checkpoint save/load throughput vs the disk's raw dd write/read.")

    @Option(help: "Model config YAML.") var config = "configs/models/bench-1k.yaml"
    @Option(help: "Workers (one hv-coord launch on localhost).") var workers = 2
    @Option(help: "Checkpoints saved (one per step; median reported).") var saves = 3
    @Option(help: "Latent T x H x W of the synthetic samples (small: the step is not what is measured).") var latent = "4x8x8"
    @Option(help: "Directory for the run and the dd file (default: a new one under the temp directory).") var dir: String?
    @Option(help: "Cold load and raw read/write rounds (interleaved; medians reported).") var rounds = 3
    @Flag(help: "Keep the run directory afterwards.") var keep = false

    func run() throws {
        try runOrExit {
            let dims = latent.split(separator: "x").compactMap { Int($0) }
            guard dims.count == 3 else { throw ValidationError("--latent must look like 4x8x8") }
            let fm = FileManager.default
            let work = dir ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("hv-ckpt-bench-\(getpid())")
            try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
            defer { if !keep { try? fm.removeItem(atPath: work) } }
            let modelPath = URL(fileURLWithPath: config).standardizedFileURL.path
            let hosts = work + "/hosts", runCfg = work + "/run.yaml", runDir = work + "/run"
            try "localhost slots=\(workers)\n".write(toFile: hosts, atomically: true, encoding: .utf8)
            try """
            version: 1
            model: \(modelPath)
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
              steps: \(saves)
              batch_size: \(workers)
              lr: 0.0001
              seed: 0
              log_every: 1
            checkpoint:
              every: 1
              keep: \(saves + 1)

            """.write(toFile: runCfg, atomically: true, encoding: .utf8)

            // Raw disk: dd of the checkpoint's byte count in the same directory, interleaved with
            // the measurements below (this machine's virtual disk varies a lot from minute to minute).
            let ddFile = work + "/dd.bin"
            var ddWrites: [Double] = [], ddReads: [Double] = []
            var blocks = 0
            func ddWrite() throws {
                let t = Date()
                guard try benchRunProcess("/bin/dd", ["if=/dev/zero", "of=\(ddFile)", "bs=4M", "count=\(blocks)", "conv=fsync", "status=none"]) == 0 else {
                    throw ValidationError("dd write failed")
                }
                ddWrites.append(Date().timeIntervalSince(t))
            }
            func ddRead() throws {
                _ = benchDropCaches()
                let t = Date()
                guard try benchRunProcess("/bin/dd", ["if=\(ddFile)", "of=/dev/null", "bs=4M", "status=none"]) == 0 else { throw ValidationError("dd read failed") }
                ddReads.append(Date().timeIntervalSince(t))
            }
            // The checkpoint's size, known in advance: 12 bytes/param (+ a little HDF5 metadata).
            var probe = try RunConfig.load(path: runCfg)
            probe.train.batch_size = 1
            let params = try Trainer(config: probe).engine.units.reduce(0) { $0 + $1.count }
            blocks = (12 * params + (4 << 20) - 1) / (4 << 20)
            try ddWrite()

            // Save: a real launch.
            let coord = benchSiblingExecutable("hv-coord")
            let launchLog = work + "/launch.log"
            fm.createFile(atPath: launchLog, contents: nil)
            let t0 = Date()
            let status = try benchRunProcess(coord, ["launch", "--nodes", hosts, "--config", runCfg, "--run-dir", runDir, "--quiet"],
                                        stderr: FileHandle(forWritingAtPath: launchLog))
            let wall = Date().timeIntervalSince(t0)
            let log = (try? String(contentsOfFile: runDir + "/logs/rank-0.log", encoding: .utf8)) ?? ""
            guard status == 0 else {
                let tail = ((try? String(contentsOfFile: launchLog, encoding: .utf8)) ?? "").split(separator: "\n").suffix(10).joined(separator: "\n")
                throw ValidationError("hv-coord launch failed (exit \(status)):\n\(tail)\nlogs in \(runDir)/logs (use --keep)")
            }
            let saveTimes = log.split(separator: "\n").compactMap { line -> Double? in
                guard let r = line.range(of: #"saved checkpoint \S+ \(([0-9.]+)s\)"#, options: .regularExpression) else { return nil }
                let m = line[r]
                return Double(m[m.index(after: m.lastIndex(of: "(")!)...].dropLast(2))
            }
            guard !saveTimes.isEmpty else { throw ValidationError("no 'saved checkpoint' line in \(runDir)/logs/rank-0.log") }
            let ckpt = runDir + "/checkpoints/" + Checkpointing.directoryName(step: saves)
            let files = try fm.contentsOfDirectory(atPath: ckpt).filter { $0.hasSuffix(".h5") }
            let fileBytes = try files.reduce(0) { $0 + ((try fm.attributesOfItem(atPath: ckpt + "/" + $1)[.size] as? Int) ?? 0) }
            let manifest = try CheckpointManifest.read(directory: ckpt)
            let stateBytes = 12 * params
            try ddWrite()

            // Load, cold cache when we can drop it, interleaved with raw reads.
            var cfg = try RunConfig.load(path: runCfg)
            cfg.train.batch_size = 1
            let trainer = try Trainer(config: cfg)
            var verifies: [Double] = [], loads: [Double] = [], resumes: [Double] = []
            var dropped = true
            let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            func parallelShardReads() throws -> Double {
                let outs = (0..<manifest.world_size).map { work + "/shard-read-\($0).txt" }
                let procs = try (0..<manifest.world_size).map { r -> Process in
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: me)
                    p.arguments = ["checkpoint-shard-read", ckpt, "--rank", "\(r)", "--out", outs[r]]
                    p.standardInput = FileHandle.nullDevice
                    try p.run()
                    return p
                }
                var spans: [(Double, Double)] = []
                for (r, p) in procs.enumerated() {
                    p.waitUntilExit()
                    guard p.terminationReason == .exit, p.terminationStatus == 0,
                          let text = try? String(contentsOfFile: outs[r], encoding: .utf8) else { throw ValidationError("checkpoint-shard-read rank \(r) failed") }
                    let xs = text.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                    guard xs.count >= 2 else { throw ValidationError("checkpoint-shard-read rank \(r): bad output '\(text)'") }
                    spans.append((xs[0], xs[1]))
                }
                return spans.map(\.1).max()! - spans.map(\.0).min()!
            }
            for _ in 0..<rounds {
                try ddRead()
                dropped = benchDropCaches() && dropped
                var t = Date()
                _ = try Checkpointing.verify(ckpt)
                verifies.append(Date().timeIntervalSince(t))
                _ = benchDropCaches()
                t = Date()
                try Checkpointing.load(trainer, from: ckpt)
                loads.append(Date().timeIntervalSince(t))
                _ = benchDropCaches()
                resumes.append(try parallelShardReads())
            }
            try ddRead()
            try? fm.removeItem(atPath: ddFile)
            let ddBytes = Double(blocks * (4 << 20))

            let gb = 1e9
            func list(_ xs: [Double]) -> String { xs.map { String(format: "%.2f", $0) }.joined(separator: ", ") }
            let saveMed = benchMedian(saveTimes), writeMed = benchMedian(ddWrites), readMed = benchMedian(ddReads)
            let verifyMed = benchMedian(verifies), loadMed = benchMedian(loads), resumeMed = benchMedian(resumes)
            let saveBW = Double(fileBytes) / saveMed / gb, writeBW = ddBytes / writeMed / gb, readBW = ddBytes / readMed / gb
            let verifyBW = Double(fileBytes) / verifyMed / gb, loadBW = Double(fileBytes) / loadMed / gb
            let resumeBW = Double(fileBytes) / resumeMed / gb
            print("config \(config): \(params.formatted()) parameters in the checkpoint (DiT + text encoder), \(manifest.units.count) units, \(workers) workers, ZeRO 0")
            print(String(format: "checkpoint: %@ bytes in %d shard files (12 bytes/param = %@; HDF5 overhead %.2f%%)",
                         fileBytes.formatted() as NSString, files.count, stateBytes.formatted() as NSString,
                         100 * Double(fileBytes - stateBytes) / Double(stateBytes)))
            print("page cache before each read: \(dropped ? "dropped (sync; echo 3 > /proc/sys/vm/drop_caches)" : "NOT dropped (not root?) — reads are from the page cache")")
            print("medians (all samples in seconds):")
            print(String(format: "  save   hv-coord launch, rank 0 log      %.2f s  %6.3f GB/s   [%@]", saveMed, saveBW, list(saveTimes) as NSString))
            print(String(format: "  write  dd bs=4M conv=fsync              %.2f s  %6.3f GB/s   [%@]", writeMed, writeBW, list(ddWrites) as NSString))
            print(String(format: "  verify Checkpointing.verify             %.2f s  %6.3f GB/s   [%@]", verifyMed, verifyBW, list(verifies) as NSString))
            print(String(format: "  resume %d ranks, own shard file each     %.2f s  %6.3f GB/s   [%@]", workers, resumeMed, resumeBW, list(resumes) as NSString))
            print(String(format: "  load   Checkpointing.load (1 process)   %.2f s  %6.3f GB/s   [%@]", loadMed, loadBW, list(loads) as NSString))
            print(String(format: "  read   dd bs=4M                         %.2f s  %6.3f GB/s   [%@]", readMed, readBW, list(ddReads) as NSString))
            print(String(format: "save / raw write = %.2f   resume load / raw read = %.2f   1-process load / raw read = %.2f   verify / raw read = %.2f   (targets: save >= 0.5, load >= 0.5)",
                         saveBW / writeBW, resumeBW / readBW, loadBW / readBW, verifyBW / readBW))
            print(String(format: "(launch wall time %.1f s for %d steps + saves; on --resume the coordinator verifies once, then each of the %d workers reads only its own shard file)",
                         wall, saves, workers))
        }
    }
}

/// Another executable of this build (next to this one).
func benchSiblingExecutable(_ name: String) -> String {
    let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    return me.deletingLastPathComponent().appendingPathComponent(name).path
}

/// Runs a program to completion (output inherited unless redirected); returns its exit status.
@discardableResult
func benchRunProcess(_ path: String, _ args: [String], env: [String: String]? = nil, stdout: FileHandle? = nil, stderr: FileHandle? = nil) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let env { p.environment = env }
    if let stdout { p.standardOutput = stdout }
    if let stderr { p.standardError = stderr }
    p.standardInput = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    return p.terminationReason == .exit ? p.terminationStatus : 128 + p.terminationStatus
}

/// sync + drop the page cache (needs root); false when not allowed.
func benchDropCaches() -> Bool {
    sync()
    guard let h = FileHandle(forWritingAtPath: "/proc/sys/vm/drop_caches") else { return false }
    defer { try? h.close() }
    do { try h.write(contentsOf: Data("3\n".utf8)) } catch { return false }
    return true
}

/// One rank's disk part of a same-layout resume, for `hv-bench checkpoint`: reads and checks
/// its own shard file and writes "START END BYTES" (seconds since the epoch) to --out.
struct CheckpointShardRead: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "checkpoint-shard-read", abstract: "One rank of `hv-bench checkpoint`'s resume read.",
                                                    shouldDisplay: false)
    @Argument var checkpoint: String
    @Option var rank: Int
    @Option var out: String

    func run() throws {
        try runOrExit {
            let t0 = Date().timeIntervalSince1970
            let bytes = try Checkpointing.readOwnShard(checkpoint, rank: rank)
            let t1 = Date().timeIntervalSince1970
            try String(format: "%.6f %.6f %d\n", t0, t1, bytes).write(toFile: out, atomically: true, encoding: .utf8)
        }
    }
}
