import Foundation
import HVComm
import HVParallel
import HVTensor

/// A training worker: joins the coordinator, connects the ring to its peers, trains its share
/// of every global batch and reports metrics (rank 0) until done or told to abort.
public struct WorkerOptions: Sendable {
    public var coordinator: String       // tcp://host:port
    public var rank: Int
    public var worldSize: Int
    public var configPath: String
    public var zeroStage: Int
    public var steps: Int?
    public var runDir: String
    public var bindHost: String?
    public var rendezvousTimeout: Double
    public var collectiveTimeout: Double
    public var bf16Wire: Bool
    /// A checkpoint directory to resume from (resolved by the coordinator).
    public var resume: String? = nil
    public var batchSize: Int? = nil
    /// Stop (and save) after this step without changing the schedule's length.
    public var stopAt: Int? = nil
    /// Exit when the coordinator has not been heard from for this long (seconds).
    public var heartbeatTimeout: Double = 30
    /// The run's CurveZMQ keys (a 0600 file written by the coordinator); nil: no authentication.
    public var keyFile: String? = nil
    /// Log a failed checkpoint save and keep training instead of stopping.
    public var continueOnSaveError = false

    public init(coordinator: String, rank: Int, worldSize: Int, configPath: String, zeroStage: Int, steps: Int?, runDir: String,
                bindHost: String?, rendezvousTimeout: Double, collectiveTimeout: Double, bf16Wire: Bool) {
        self.coordinator = coordinator; self.rank = rank; self.worldSize = worldSize; self.configPath = configPath
        self.zeroStage = zeroStage; self.steps = steps; self.runDir = runDir; self.bindHost = bindHost
        self.rendezvousTimeout = rendezvousTimeout; self.collectiveTimeout = collectiveTimeout; self.bf16Wire = bf16Wire
    }
}

public enum WorkerError: Error, CustomStringConvertible {
    case rendezvous(String)
    case aborted
    public var description: String {
        switch self {
        case .rendezvous(let m): "rendezvous failed: \(m)"
        case .aborted: "aborted by the coordinator"
        }
    }
}

/// Liveness in both directions on its own socket and thread (a long step never delays it):
/// sends a heartbeat every second, expects the coordinator's ping back, and ends the process
/// when the coordinator has been silent for `timeout` seconds (or the local parent is gone), so
/// no worker outlives its coordinator.
final class HeartbeatThread: @unchecked Sendable {
    let lock = NSLock()
    var step = 0
    var stopping = false
    let finished = DispatchSemaphore(value: 0)
    func setStep(_ s: Int) { lock.withLock { step = s } }

    /// Stops the thread and waits (about a second at most) until it has closed its socket.
    func stop() {
        lock.withLock { stopping = true }
        _ = finished.wait(timeout: .now() + 3)
    }

    func start(context: ZMQContext, coordinator: String, rank: Int, worldSize: Int, timeout: Double, auth: ZMQAuth?,
               log: @escaping @Sendable (String) -> Void) throws {
        let sock = try context.makeSocket(.dealer)
        try sock.setRoutingID(Array("hb-rank-\(rank)".utf8))
        try sock.setMaxMessageSize(ControlMessage.maxBytes)
        if let auth { try auth.configureClient(sock) }
        try sock.setLinger(milliseconds: 0)
        try sock.setReceiveTimeout(milliseconds: 1000)
        try sock.connect(coordinator)
        let parent = getppid()
        Thread.detachNewThread { [self] in
            var lastPing = Date()
            while !lock.withLock({ stopping }) {
                var m = ControlMessage(type: .heartbeat)
                m.rank = rank
                m.step = lock.withLock { step }
                try? sock.send(m.encoded(), dontWait: true)
                if let bytes = try? sock.receive(), let msg = try? ControlMessage.decode(bytes, worldSize: worldSize), msg.type == .ping {
                    lastPing = Date()
                }
                let silent = Date().timeIntervalSince(lastPing)
                if silent > timeout || (parent != 1 && getppid() == 1) {
                    log("rank \(rank): coordinator unreachable for \(Int(silent))s (or its process is gone); exiting")
                    _exit(3)
                }
            }
            sock.close()
            finished.signal()
        }
    }
}

/// VmRSS and VmHWM (peak) of this process in KiB, from /proc/self/status (nil where unavailable).
func residentMemoryKB() -> (rss: Int, peak: Int)? {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    func field(_ name: String) -> Int? {
        text.split(separator: "\n").first { $0.hasPrefix(name + ":") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
    }
    guard let rss = field("VmRSS"), let peak = field("VmHWM") else { return nil }
    return (rss, peak)
}

/// Saves a checkpoint with `write` (returning its directory). A failed save is logged by every
/// rank (the save agrees on failure) and stops the run, or with --continue-on-save-error is
/// skipped; rank 0 reports a good one to the coordinator.
func saveCheckpoint(_ o: WorkerOptions, step: Int, send: (ControlMessage) -> Void, log: (String) -> Void,
                    write: () throws -> String) throws {
    let t0 = Date()
    let dir: String
    do { dir = try write() } catch let e as CheckpointSaveError {
        log("rank \(o.rank): \(e)")
        if o.continueOnSaveError { log("rank \(o.rank): --continue-on-save-error: training goes on"); return }
        throw e
    }
    guard o.rank == 0 else { return }
    log(String(format: "saved checkpoint %@ (%.2fs)", dir, Date().timeIntervalSince(t0)))
    var m = ControlMessage(type: .saved)
    m.rank = 0; m.step = step; m.path = dir
    send(m)
}

/// Polls the coordinator (non-blocking) before a step: an abort throws; a stop is agreed on by
/// all ranks (an all-reduce of the flag), so that everyone saves at the same step.
func stopAgreed(control: ZMQSocket, comm: Communicator) throws -> Bool {
    var flag: [Float] = [0]
    if let bytes = try? control.receive(dontWait: true), let m = try? ControlMessage.decode(bytes, worldSize: comm.worldSize) {
        if m.type == .abort { throw WorkerError.aborted }
        if m.type == .stop { flag[0] = 1 }
    }
    try flag.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: 1) }
    return flag[0] > 0
}

/// Runs a worker: rendezvous, the data plane, then training — or, when `job` is given, that job
/// on the connected communicator instead (e.g. context-parallel sampling), followed by a barrier.
public func runWorker(_ o: WorkerOptions, job: ((Communicator) throws -> Void)? = nil, log: @escaping @Sendable (String) -> Void) throws {
    // HV_TRACE_MEMORY=1: log resident and peak memory after set-up, every step and every save
    // (where a rank's peak RSS comes from; see BENCHMARKS.md, memory per ZeRO stage); =2 also
    // at the ZeRO engine's gathers and reductions.
    let traceLevel = Int(ProcessInfo.processInfo.environment["HV_TRACE_MEMORY"] ?? "") ?? 0, traceMemory = traceLevel > 0
    func memory(_ phase: @autoclosure () -> String) {
        guard traceMemory, let m = residentMemoryKB() else { return }
        log(String(format: "rank %d memory %@: rss %.1f MiB, peak %.1f MiB", o.rank, phase(), Double(m.rss) / 1024, Double(m.peak) / 1024))
    }
    let auth = try o.keyFile.map { try RunKeys.read(path: $0, worldSize: o.worldSize).auth(rank: o.rank) }
    let ctx = try ZMQContext(ioThreads: 1)
    defer { ctx.close() }
    let heartbeat = HeartbeatThread()
    try heartbeat.start(context: ctx, coordinator: o.coordinator, rank: o.rank, worldSize: o.worldSize, timeout: o.heartbeatTimeout,
                        auth: auth, log: log)
    defer { heartbeat.stop() }  // runs before ctx.close(): the thread closes its own socket
    let control = try ctx.makeSocket(.dealer)
    defer { control.close() }
    try control.setRoutingID(Array("rank-\(o.rank)".utf8))
    try control.setLinger(milliseconds: 1000)
    try control.setSendTimeout(milliseconds: Int(o.rendezvousTimeout * 1000))
    try control.setMaxMessageSize(ControlMessage.maxBytes)
    if let auth { try auth.configureClient(control) }
    try control.connect(o.coordinator)

    // Advertise the address this host uses to reach the coordinator (works across namespaces).
    let coordHost = o.coordinator.replacingOccurrences(of: "tcp://", with: "").split(separator: ":").dropLast().joined(separator: ":")
    let host = o.bindHost ?? localAddress(reaching: coordHost) ?? "127.0.0.1"
    // Workers on one host and network namespace talk over Unix sockets (HV_DATA_TRANSPORT=tcp: TCP only).
    let comm = try ZMQRingCommunicator(rank: o.rank, worldSize: o.worldSize, bind: "tcp://\(host):*", context: ctx,
                                       timeoutSeconds: o.collectiveTimeout, auth: auth,
                                       sameHostIPC: ProcessInfo.processInfo.environment["HV_DATA_TRANSPORT"] != "tcp", log: log)
    defer { comm.close() }
    log("rank \(o.rank): data-plane inbox \(comm.endpoint)" + (auth.map { $0.mechanism == .curve ? " (CurveZMQ, run keys only)" : " (HMAC tokens, not encrypted)" } ?? " (NOT authenticated)"))
    comm.wireDType = o.bf16Wire ? .bfloat16 : .float32

    func send(_ m: ControlMessage) { try? control.send(m.encoded()) }
    var hello = ControlMessage(type: .hello)
    hello.rank = o.rank; hello.endpoint = comm.endpoint; hello.host = ProcessInfo.processInfo.hostName; hello.pid = Int(getpid())
    send(hello)

    try control.setReceiveTimeout(milliseconds: Int(o.rendezvousTimeout * 1000))
    let start: ControlMessage
    do {
        start = try ControlMessage.decode(try control.receive(), worldSize: o.worldSize)
    } catch ZMQError.timedOut {
        throw WorkerError.rendezvous("no start from the coordinator \(o.coordinator) within \(o.rendezvousTimeout)s")
    }
    if start.type == .abort { throw WorkerError.aborted }
    guard start.type == .start, let peers = start.peers else { throw WorkerError.rendezvous("expected start, got \(start.type)") }
    try comm.connect(peers: peers)
    if o.rank == 0 {
        let local = comm.routes.filter { $0.hasPrefix("ipc://") }.count
        log("data plane: \(local) of \(o.worldSize) inboxes reached over Unix sockets (same host), \(o.worldSize - local) over TCP")
    }

    do {
        if let job {
            try job(comm)
            try comm.barrier()
            var done = ControlMessage(type: .done)
            done.rank = o.rank
            send(done)
            return
        }
        if VAERunConfig.isVAERun(path: o.configPath) {
            try trainVAE(o, comm: comm, control: control, heartbeat: heartbeat, send: send, log: log)
            try comm.barrier()
            var done = ControlMessage(type: .done)
            done.rank = o.rank
            send(done)
            return
        }
        var cfg = try RunConfig.load(path: o.configPath)
        if let steps = o.steps { cfg.train.steps = steps }
        if let b = o.batchSize { cfg.train.batch_size = b }
        // ZeRO-3 is chosen for per-rank memory: let RSS follow live memory (costs page faults).
        if o.zeroStage == 3 { HVRuntime.preferResidentMemory() }
        let trainer = try Trainer(config: cfg, comm: comm, zeroStage: o.zeroStage)
        memory("after set-up")
        if traceLevel >= 2 { trainer.engine.memoryProbe = { memory("step \(trainer.step): " + $0) } }
        if let dir = o.resume {
            let t0 = Date()
            try Checkpointing.load(trainer, from: dir)
            log(String(format: "resumed from %@ at step %ld (checkpoint load %.2fs)", dir, trainer.step, Date().timeIntervalSince(t0)))
        }
        let state = trainer.engine.modelStateBytes, held = trainer.engine.units.reduce(0) { $0 + $1.count }
        let total = trainer.unitPlacement.reduce(0) { n, u in n + u.params.reduce(0) { $0 + $1.1.count } }
        let holder = trainer.pipeline == nil ? "ZeRO over \(o.worldSize) rank(s)"
            : "pipeline stage \(trainer.mesh.ppRank), ZeRO over \(trainer.mesh.stageGroup.count) rank(s)"
        log(String(format: "rank %d model state: %@ of %@ parameters (%@), weights %.1f MiB + gradients %.1f MiB + Adam %.1f MiB = %.1f MiB",
                   o.rank, held.formatted() as NSString, total.formatted() as NSString, holder as NSString,
                   Double(state.weights) / 1048576, Double(state.gradients) / 1048576, Double(state.moments) / 1048576,
                   Double(state.weights + state.gradients + state.moments) / 1048576))
        if o.rank == 0 && !cfg.stages.isEmpty {
            log("stages: " + cfg.stages.enumerated().map { "\($0.offset) \($0.element.name) \($0.element.steps) steps" }.joined(separator: ", ") + "; now stage \(cfg.stageIndex(forStep: trainer.step))")
        }
        if o.rank == 0 {
            log("training \(cfg.model.parameterCount) DiT parameters on \(o.worldSize) worker(s) (mesh \(trainer.mesh)), ZeRO stage \(o.zeroStage), batch \(cfg.train.batch_size), OpenBLAS \(BLAS.coreName)")
            if let p = trainer.pipeline {
                log("pipeline partition (balanced by FLOPs): \(p.partition)")
                log("pipeline: 1F1B over \(cfg.train.micro_batches) micro-batches of \(cfg.train.batch_size / (trainer.mesh.dp * cfg.train.micro_batches)) samples per replica")
            }
        }
        // Measured pipeline bubble: idle / schedule seconds summed over ranks, from step 2 on
        // (the first step also pays one-off allocation and connection set-up).
        var bubble = (idle: 0.0, total: 0.0, steps: 0)
        func save() throws {
            try saveCheckpoint(o, step: trainer.step, send: send, log: log) { try Checkpointing.save(trainer, runDir: o.runDir, keep: cfg.checkpoint.keep) }
            memory("after the save at step \(trainer.step)")
        }
        var stopRequested = false
        var lastSaved = -1
        let lastStep = min(cfg.train.steps, o.stopAt ?? Int.max)
        while trainer.step < lastStep {
            if try stopAgreed(control: control, comm: comm) { stopRequested = true; break }
            let s = try trainer.trainStep()
            heartbeat.setStep(trainer.step)
            memory("after step \(trainer.step)")
            if o.rank == 0, trainer.pipeline != nil, s.pipelineSeconds > 0 {
                if s.step > 0 { bubble.idle += s.pipelineIdleSeconds; bubble.total += s.pipelineSeconds; bubble.steps += 1 }
                if trainer.step % cfg.train.log_every == 0 || trainer.step == lastStep {
                    let formula = PipelineSchedule.bubbleFraction(stages: trainer.mesh.pp, microBatches: cfg.train.micro_batches)
                    log(String(format: "pipeline bubble at step %ld: measured %.3f (this step %.3f, mean of %ld steps), formula (p-1)/(m+p-1) = %.3f for p %ld, m %ld",
                               trainer.step, bubble.total > 0 ? bubble.idle / bubble.total : s.pipelineIdleSeconds / s.pipelineSeconds,
                               s.pipelineIdleSeconds / s.pipelineSeconds, bubble.steps, formula, trainer.mesh.pp, cfg.train.micro_batches))
                }
            }
            if o.rank == 0 {
                var m = ControlMessage(type: .metrics)
                m.rank = 0; m.step = s.step + 1; m.loss = Double(s.loss); m.lr = Double(s.lr); m.grad_norm = Double(s.gradNorm)
                m.tokens_per_s = Double(s.videoTokens) / s.seconds; m.step_s = s.seconds; m.comm_s = s.commSeconds; m.samples = s.samples
                send(m)
            }
            if cfg.checkpoint.every > 0 && trainer.step % cfg.checkpoint.every == 0 { try save(); lastSaved = trainer.step }
            if trainer.endsStage(trainer.step) && trainer.step < lastStep {
                // Progressive training: a checkpoint between stages; a resume from it starts the next stage.
                if lastSaved != trainer.step { try save(); lastSaved = trainer.step }
                let next = cfg.stageIndex(forStep: trainer.step)
                if o.rank == 0 { log("stage \(next - 1) (\(cfg.stages[next - 1].name)) done at step \(trainer.step); next: stage \(next) (\(cfg.stages[next].name))") }
            }
        }
        if lastSaved != trainer.step { try save() }
        if stopRequested && o.rank == 0 { log("stopped on request at step \(trainer.step)") }
        try comm.barrier()
        var done = ControlMessage(type: .done)
        done.rank = o.rank
        send(done)
    } catch {
        var failed = ControlMessage(type: .failed)
        failed.rank = o.rank
        failed.error = "\(error)"
        send(failed)
        throw error
    }
}
