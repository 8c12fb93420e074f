import Foundation
import HVComm
import HVTensor

/// `hv-coord launch`: starts one worker per slot of a hosts file, does the rendezvous, streams
/// worker logs with a rank prefix, prints progress, writes RUN_DIR/metrics.jsonl and fails fast
/// (all workers stopped, non-zero exit, the failing rank and host named) on any worker failure.
public struct LaunchOptions: Sendable {
    public enum Launcher: String, Sendable { case auto, local, ssh, template }
    public var hosts: HostsFile
    public var configPath: String
    public var runDir: String
    public var steps: Int?
    public var zeroStage: Int
    public var launcher: Launcher
    /// e.g. `ip netns exec {host} {cmd}`; `{cmd}` is the shell-quoted worker command, `{rank}`
    /// the rank. Run as `/bin/sh -c "exec TEMPLATE"`, so the worker replaces the shell.
    public var template: String?
    /// Address the coordinator binds and workers connect to.
    public var coordinatorAddress: String
    public var port: Int
    public var rendezvousTimeout: Double
    public var collectiveTimeout: Double
    public var bf16Wire: Bool
    /// The worker executable (this binary) and the argument that selects the worker mode.
    public var workerExecutable: String
    public var quiet: Bool
    /// `auto` (latest good checkpoint of the run directory, if any) or a checkpoint directory.
    public var resume: String? = nil
    /// Overrides train.batch_size (the global batch).
    public var batchSize: Int? = nil
    public var stopAt: Int? = nil
    /// A worker silent for this long (seconds) is declared dead.
    public var heartbeatTimeout: Double = 30
    /// CurveZMQ on every socket of the run (control and data plane). Off only by an explicit
    /// `--insecure-no-auth`, for a network where every host is trusted.
    public var authenticate = true
    /// CURVE when libzmq has it (`.best`), else the HMAC fallback.
    public var authMechanism: AuthMechanism = .best
    /// A failed checkpoint save is logged and training goes on (default: the run stops).
    public var continueOnSaveError = false
    /// Sampling instead of training (`hv-coord launch --sample -- ARGS`): hv-sample's arguments.
    public var sampleArguments: [String]? = nil

    public init(hosts: HostsFile, configPath: String, runDir: String, steps: Int?, zeroStage: Int, launcher: Launcher, template: String?,
                coordinatorAddress: String, port: Int, rendezvousTimeout: Double, collectiveTimeout: Double, bf16Wire: Bool,
                workerExecutable: String, quiet: Bool) {
        self.hosts = hosts; self.configPath = configPath; self.runDir = runDir; self.steps = steps; self.zeroStage = zeroStage
        self.launcher = launcher; self.template = template; self.coordinatorAddress = coordinatorAddress; self.port = port
        self.rendezvousTimeout = rendezvousTimeout; self.collectiveTimeout = collectiveTimeout; self.bf16Wire = bf16Wire
        self.workerExecutable = workerExecutable; self.quiet = quiet
    }
}

public enum LaunchError: Error, CustomStringConvertible {
    case spawn(rank: Int, host: String, reason: String)
    case rendezvous(seconds: Double, missing: [(rank: Int, host: String)])
    case workerFailed(rank: Int, host: String, detail: String, lastStep: Int)
    case interrupted

    public var description: String {
        switch self {
        case .spawn(let r, let h, let why): "could not start rank \(r) on \(h): \(why)"
        case .rendezvous(let s, let m):
            "rendezvous timed out after \(s)s: " + m.map { "rank \($0.rank) on \($0.host)" }.joined(separator: ", ")
                + " never joined (is the host reachable, is hv built there, did the worker crash at start? see its log)"
        case .workerFailed(let r, let h, let d, let s): "rank \(r) on \(h) failed after step \(s): \(d)"
        case .interrupted: "interrupted; workers stopped (after saving a checkpoint if they could)"
        }
    }
}

/// Shell-quotes one argument.
func shellQuote(_ s: String) -> String {
    if !s.isEmpty && s.allSatisfy({ $0.isLetter || $0.isNumber || "-_./:=@%+,".contains($0) }) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// Splits a byte stream into lines (one per pipe; called from that pipe's handler only).
final class LineBuffer: @unchecked Sendable {
    var pending = Data()
    func append(_ chunk: Data) -> [String] {
        pending.append(chunk)
        var lines: [String] = []
        while let nl = pending.firstIndex(of: 0x0A) {
            lines.append(String(decoding: pending[pending.startIndex..<nl], as: UTF8.self))
            pending.removeSubrange(pending.startIndex...nl)
        }
        return lines
    }
}

/// Reads `pipe` on its own thread with blocking reads until end of file, handing each chunk to
/// `consume` (on that thread). Returns a semaphore signalled at end of file. (Not
/// `FileHandle.readabilityHandler`: its teardown crashed hv-coord in libdispatch on Linux.)
@discardableResult
public func readPipe(_ pipe: Pipe, _ consume: @escaping @Sendable (Data) -> Void) -> DispatchSemaphore {
    let done = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        let fd = pipe.fileHandleForReading.fileDescriptor
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            consume(Data(buffer[0..<n]))
        }
        done.signal()
    }
    return done
}

final class WorkerProcess: @unchecked Sendable {
    let rank: Int, host: String
    let process = Process()
    var done = false
    var exitReported = false
    init(rank: Int, host: String) { self.rank = rank; self.host = host }
}

public final class Coordinator: @unchecked Sendable {
    let o: LaunchOptions
    let outputLock = NSLock()
    var logFiles: [Int: FileHandle] = [:]
    var workers: [WorkerProcess] = []
    var lastStep = 0
    var metricsFile: FileHandle?
    var resolvedResume: String?
    var keyFile: String?
    /// Bad or unexpected control messages seen (each of the first few is logged).
    var rejectedMessages = 0
    nonisolated(unsafe) static var interrupted = false

    public init(options: LaunchOptions) { o = options }

    func emit(_ line: String, rank: Int? = nil) {
        outputLock.withLock {
            if let rank, let f = logFiles[rank] { try? f.write(contentsOf: Data((line + "\n").utf8)) }
            if !o.quiet || rank == nil {
                let prefix = rank.map { r in "[rank \(r)] " } ?? ""
                FileHandle.standardError.write(Data((prefix + line + "\n").utf8))
            }
        }
    }

    func workerCommand(rank: Int, coordinator: String) -> [String] {
        var args = [o.workerExecutable, "worker", "--coordinator", coordinator, "--rank", "\(rank)", "--world", "\(o.hosts.worldSize)",
                    "--config", o.configPath, "--zero", "\(o.zeroStage)", "--run-dir", o.runDir,
                    "--rendezvous-timeout", "\(o.rendezvousTimeout)", "--collective-timeout", "\(o.collectiveTimeout)"]
        if let steps = o.steps { args += ["--steps", "\(steps)"] }
        if o.bf16Wire { args.append("--bf16-wire") }
        if let r = resolvedResume { args += ["--resume", r] }
        if let b = o.batchSize { args += ["--batch-size", "\(b)"] }
        if let s = o.stopAt { args += ["--stop-at", "\(s)"] }
        args += ["--heartbeat-timeout", "\(o.heartbeatTimeout)"]
        if let k = keyFile { args += ["--key-file", k] } else { args.append("--insecure-no-auth") }
        if o.continueOnSaveError { args.append("--continue-on-save-error") }
        if let s = o.sampleArguments { args += ["--sample", "--"] + s }
        return args
    }

    func spawn(_ w: WorkerProcess, command: [String]) throws {
        var env = BLASEnvironment.childEnvironment()
        env[BLASEnvironment.markerVariable] = "1"   // kernels already chosen here; no re-exec in local workers
        env["HV_RANK"] = "\(w.rank)"
        env["HV_WORLD_SIZE"] = "\(o.hosts.worldSize)"
        // Remote workers (ssh, template) start from their host's environment: they get the rank,
        // world size and OpenBLAS spin, and re-exec themselves if that host forces weak kernels.
        let envPrefix = ["env"] + ["HV_RANK", "HV_WORLD_SIZE", BLASEnvironment.timeoutVariable].map { "\($0)=\(env[$0]!)" }
        let mode: LaunchOptions.Launcher = o.template != nil ? .template : (o.launcher == .auto ? (HostsFile.isLocal(w.host) ? .local : .ssh) : o.launcher)
        switch mode {
        case .local, .auto:
            w.process.executableURL = URL(fileURLWithPath: command[0])
            w.process.arguments = Array(command.dropFirst())
        case .ssh:
            let cwd = FileManager.default.currentDirectoryPath
            w.process.executableURL = URL(fileURLWithPath: "/usr/bin/ssh")
            w.process.arguments = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", w.host,
                                   "cd \(shellQuote(cwd)) && exec " + (envPrefix + command).map(shellQuote).joined(separator: " ")]
        case .template:
            let cmd = (envPrefix + command).map(shellQuote).joined(separator: " ")
            let line = (o.template ?? "{cmd}").replacingOccurrences(of: "{host}", with: shellQuote(w.host)).replacingOccurrences(of: "{cmd}", with: cmd)
                .replacingOccurrences(of: "{rank}", with: "\(w.rank)")
            w.process.executableURL = URL(fileURLWithPath: "/bin/sh")
            w.process.arguments = ["-c", "exec " + line]
        }
        w.process.environment = env
        let out = Pipe(), err = Pipe()
        w.process.standardOutput = out
        w.process.standardError = err
        w.process.standardInput = FileHandle.nullDevice
        for pipe in [out, err] {
            let rank = w.rank
            let pending = LineBuffer()
            // A blocking reader thread per pipe, not `readabilityHandler`: tearing down the
            // latter's dispatch source races the fd's close and intermittently crashes libdispatch
            // on Linux (SIGSEGV in _dispatch_event_loop_drain; swift-corelibs-libdispatch#949).
            readPipe(pipe) { [weak self] chunk in
                for line in pending.append(chunk) { self?.emit(line, rank: rank) }
            }
        }
        do { try w.process.run() } catch { throw LaunchError.spawn(rank: w.rank, host: w.host, reason: "\(error)") }
    }

    /// Stops every worker still running: abort message, then SIGTERM, then SIGKILL.
    func stopAll(_ router: ZMQSocket?) {
        if let router {
            for w in workers where w.process.isRunning {
                try? router.send(Array("rank-\(w.rank)".utf8), more: true, dontWait: true)
                try? router.send(ControlMessage(type: .abort).encoded(), dontWait: true)
            }
        }
        let deadline = Date().addingTimeInterval(3)
        while workers.contains(where: { $0.process.isRunning }) && Date() < deadline { usleep(50_000) }
        for w in workers where w.process.isRunning { w.process.terminate() }
        let killAt = Date().addingTimeInterval(3)
        while workers.contains(where: { $0.process.isRunning }) && Date() < killAt { usleep(50_000) }
        for w in workers where w.process.isRunning { kill(w.process.processIdentifier, SIGKILL) }
        for w in workers { w.process.waitUntilExit() }
    }

    func describeExit(_ p: Process) -> String {
        p.terminationReason == .uncaughtSignal ? "killed by signal \(p.terminationStatus)" : "exited with status \(p.terminationStatus)"
    }

    public func run() throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: o.runDir + "/logs", withIntermediateDirectories: true)
        // Append: a resumed run continues the same logs and metrics.
        func appending(_ path: String) -> FileHandle? {
            if !fm.fileExists(atPath: path) { fm.createFile(atPath: path, contents: nil) }
            let h = FileHandle(forWritingAtPath: path)
            h?.seekToEndOfFile()
            return h
        }
        for s in 0..<o.hosts.worldSize { logFiles[s] = appending(o.runDir + "/logs/rank-\(s).log") }
        metricsFile = appending(o.runDir + "/metrics.jsonl")
        defer { for (_, f) in logFiles { try? f.close() }; try? metricsFile?.close() }

        let ctx = try ZMQContext(ioThreads: 1)
        defer { ctx.close() }
        let router = try ctx.makeSocket(.router)
        defer { router.close() }
        try router.setRouterMandatory(true)
        try router.setLinger(milliseconds: 500)
        try router.setReceiveTimeout(milliseconds: 200)
        try router.setMaxMessageSize(ControlMessage.maxBytes)
        if o.authenticate {
            // Fresh keys for every launch (and restart), in a file only this user can read.
            let keys = try RunKeys.generate(worldSize: o.hosts.worldSize, mechanism: o.authMechanism)
            let path = o.runDir + "/.hv-run-keys-\(getpid())-\(UUID().uuidString.prefix(8)).json"
            try keys.write(to: path)
            keyFile = path
            try keys.auth(rank: nil).configureServer(router) { [weak self] in self?.emit("hv-coord: control socket " + $0) }
        } else {
            emit("hv-coord: WARNING: --insecure-no-auth: control and data sockets accept any peer that can reach them")
        }
        defer { if let k = keyFile { unlink(k) } }
        // Bind all interfaces unless a specific address was given; advertise a name workers can reach.
        let bindAddress = o.coordinatorAddress.first?.isNumber == true ? o.coordinatorAddress : "*"
        try router.bind("tcp://\(bindAddress):\(o.port == 0 ? "*" : String(o.port))")
        let port = try router.lastEndpoint.split(separator: ":").last.map(String.init) ?? "0"
        let endpoint = "tcp://\(o.coordinatorAddress):\(port)"
        let W = o.hosts.worldSize
        emit("hv-coord: \(W) worker(s) on \(o.hosts.hosts.joined(separator: ", ")); control \(endpoint); run dir \(o.runDir)")

        signal(SIGINT) { _ in Coordinator.interrupted = true }
        signal(SIGTERM) { _ in Coordinator.interrupted = true }
        defer { signal(SIGINT, SIG_DFL); signal(SIGTERM, SIG_DFL) }

        if let r = o.resume {
            resolvedResume = try Checkpointing.resolve(r, runDir: o.runDir) { emit($0) }
            emit(resolvedResume.map { "hv-coord: resuming from \($0)" } ?? "hv-coord: no checkpoint in \(o.runDir)/checkpoints; starting fresh")
        }
        workers = o.hosts.slots.enumerated().map { WorkerProcess(rank: $0.offset, host: $0.element.host) }
        do {
            for w in workers { try spawn(w, command: workerCommand(rank: w.rank, coordinator: endpoint)) }
        } catch { stopAll(nil); throw error }

        func fail(_ e: Error) -> Error { stopAll(router); return e }
        var lastSeen = [Date](repeating: Date(), count: W)
        var lastStepOf = [Int](repeating: 0, count: W)
        func reject(_ why: String) {
            rejectedMessages += 1
            if rejectedMessages <= 20 || rejectedMessages % 1000 == 0 {
                emit("hv-coord: ignoring a control message \(why) (\(rejectedMessages) so far)")
            }
        }
        func receive() throws -> (Int, ControlMessage)? {
            guard let frames = try? router.receiveMultipartMessages() else { return nil }
            let sender = frames[frames.count - 1].senderDescription
            guard frames.count == 2 else { reject("of \(frames.count - 1) frames from \(sender), expected 1"); return nil }
            let id = String(decoding: frames[0].bytes.prefix(64), as: UTF8.self)
            do {
                let m = try ControlMessage.decode(frames[1].bytes, worldSize: W)
                // With CURVE the ZAP handler named the connection by its key: it must be the rank claimed.
                if keyFile != nil, let r = m.rank, frames[1].property("User-Id") != "rank-\(r)" {
                    reject("from \(sender) that claims rank \(r)"); return nil
                }
                if m.type == .heartbeat, let r = m.rank, id == "hb-rank-\(r)" {
                    lastSeen[r] = Date()
                    lastStepOf[r] = m.step ?? lastStepOf[r]
                    try? router.send(frames[0].bytes, more: true, dontWait: true)
                    try? router.send(ControlMessage(type: .ping).encoded(), dontWait: true)
                    return nil
                }
                guard let r = m.rank, id == "rank-\(r)" else { reject("from \(id) (\(sender)) that claims rank \(m.rank ?? -1)"); return nil }
                return (r, m)
            } catch {
                reject("from \(id) (\(sender)): \(error)")
                return nil
            }
        }

        /// After a first failure report, waits up to a second for the other ranks' reports and
        /// names the rank whose error is its own (not "failed on rank(s) N", an echo of another's).
        func collectFailures(first: (Int, String)) -> LaunchError {
            var reports = [first]
            let until = Date().addingTimeInterval(1)
            while Date() < until && reports.count < W {
                if let (r, m) = try? receive(), m.type == .failed { reports.append((r, m.error ?? "unknown error")) }
            }
            let primary = reports.first { !$0.1.contains("see their logs") } ?? reports[0]
            return LaunchError.workerFailed(rank: primary.0, host: workers[primary.0].host, detail: primary.1, lastStep: lastStep)
        }
        func checkExits() throws {
            for w in workers where !w.process.isRunning && !w.exitReported {
                w.exitReported = true
                if !(w.done && w.process.terminationStatus == 0 && w.process.terminationReason == .exit) {
                    usleep(200_000)  // let the last log lines arrive
                    // A worker that reported why it failed: use its report rather than its exit status.
                    for _ in 0..<5 {
                        if let (r, m) = try? receive(), m.type == .failed { throw fail(collectFailures(first: (r, m.error ?? "unknown error"))) }
                    }
                    throw fail(LaunchError.workerFailed(rank: w.rank, host: w.host, detail: describeExit(w.process) + " (log: \(o.runDir)/logs/rank-\(w.rank).log)", lastStep: lastStep))
                }
            }
        }

        // Rendezvous.
        var endpoints = [String?](repeating: nil, count: W)
        let deadline = Date().addingTimeInterval(o.rendezvousTimeout)
        while endpoints.contains(where: { $0 == nil }) {
            if Coordinator.interrupted { throw fail(LaunchError.interrupted) }
            if Date() > deadline {
                let missing = endpoints.indices.filter { endpoints[$0] == nil }.map { (rank: $0, host: workers[$0].host) }
                throw fail(LaunchError.rendezvous(seconds: o.rendezvousTimeout, missing: missing))
            }
            try checkExits()
            if let (r, m) = try receive(), m.type == .hello { endpoints[r] = m.endpoint }
        }
        var start = ControlMessage(type: .start)
        start.peers = endpoints.map { $0! }
        for r in 0..<W {
            try router.send(Array("rank-\(r)".utf8), more: true)
            try router.send(start.encoded())
        }
        emit("hv-coord: all \(W) workers joined; data-plane inboxes: \(endpoints.map { $0! }.joined(separator: " "))"
             + (keyFile != nil ? "; " + o.authMechanism.summary : ""))

        // Supervise.
        let t0 = Date()
        for r in 0..<W { lastSeen[r] = Date() }
        var totalSteps = o.steps
        if totalSteps == nil {
            if VAERunConfig.isVAERun(path: o.configPath) { totalSteps = (try? VAERunConfig.load(path: o.configPath))?.train.steps }
            else if let cfg = try? RunConfig.load(path: o.configPath) { totalSteps = cfg.train.steps }
        }
        if let s = o.stopAt, let t = totalSteps { totalSteps = min(s, t) }
        var stopSent: Date? = nil
        while workers.contains(where: { !$0.done }) || workers.contains(where: { $0.process.isRunning }) {
            if Coordinator.interrupted && stopSent == nil {
                emit("hv-coord: interrupted — asking workers to save a checkpoint and stop (interrupt again to kill)")
                for w in workers {
                    try? router.send(Array("rank-\(w.rank)".utf8), more: true, dontWait: true)
                    try? router.send(ControlMessage(type: .stop).encoded(), dontWait: true)
                }
                stopSent = Date()
                Coordinator.interrupted = false
            } else if Coordinator.interrupted || (stopSent.map { Date().timeIntervalSince($0) > 120 } ?? false) {
                throw fail(LaunchError.interrupted)
            }
            if let (r, m) = try receive() {
                switch m.type {
                case .metrics:
                    lastStep = m.step ?? lastStep
                    if let data = try? JSONEncoder().encode(m) { try? metricsFile?.write(contentsOf: data + Data("\n".utf8)) }
                    let total = totalSteps ?? 0
                    let elapsed = Date().timeIntervalSince(t0)
                    let eta = total > 0 && lastStep > 0 ? elapsed / Double(lastStep) * Double(total - lastStep) : 0
                    // VAE runs report clips per second (they have no video tokens).
                    let rate = m.tokens_per_s.map { String(format: "%.0f tok/s", $0) }
                        ?? String(format: "%.2f clips/s", Double(m.samples ?? 0) / max(m.step_s ?? 1, 1e-9))
                    emit(String(format: "step %ld/%ld  loss %.4f  grad %.3f  lr %.2e  %@  comm %.0f%%  eta %.0fs", lastStep, total,
                                m.loss ?? 0, m.grad_norm ?? 0, m.lr ?? 0, rate as NSString,
                                100 * (m.comm_s ?? 0) / max(m.step_s ?? 1, 1e-9), eta))
                case .done: workers[r].done = true
                case .saved: if let p = m.path { emit("hv-coord: checkpoint \(p) saved at step \(m.step ?? 0)") }
                case .failed:
                    throw fail(collectFailures(first: (r, m.error ?? "unknown error")))
                default: break
                }
            }
            try checkExits()
            for r in 0..<W where !workers[r].done && Date().timeIntervalSince(lastSeen[r]) > o.heartbeatTimeout {
                throw fail(LaunchError.workerFailed(rank: r, host: workers[r].host,
                                                    detail: "no heartbeat for \(Int(o.heartbeatTimeout))s (hung, stopped or unreachable); its last step was \(lastStepOf[r])",
                                                    lastStep: lastStep))
            }
        }
        if stopSent != nil { throw LaunchError.interrupted }
        if o.sampleArguments != nil {
            return emit(String(format: "hv-coord: sampled on %ld worker(s) in %.1fs; logs in %@/logs", W, Date().timeIntervalSince(t0), o.runDir as NSString))
        }
        emit(String(format: "hv-coord: finished %ld steps on %ld worker(s) in %.1fs; metrics in %@/metrics.jsonl", lastStep, W,
                    Date().timeIntervalSince(t0), o.runDir as NSString))
    }
}
