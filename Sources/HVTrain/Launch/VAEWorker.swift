import Foundation
import HVComm
import HVTensor

/// The training loop of a VAE run under `hv-coord launch` (a config with a `vae:` section):
/// data parallel over the ranks, ZeRO stage 0-2, the same stop protocol, metrics and sharded
/// checkpoints as a DiT run. At the end every rank evaluates its share of the held-out clips
/// (PSNR, all-reduced) and rank 0 writes RUN_DIR/vae.h5, the single file `train-vae --out`
/// writes and `hv-sample --vae` reads.
func trainVAE(_ o: WorkerOptions, comm: Communicator, control: ZMQSocket, heartbeat: HeartbeatThread,
              send: (ControlMessage) -> Void, log: @escaping @Sendable (String) -> Void) throws {
    var cfg = try VAERunConfig.load(path: o.configPath)
    if let steps = o.steps { cfg.train.steps = steps }
    if let b = o.batchSize { cfg.train.batch_size = b }
    try cfg.validate(file: o.configPath)
    let trainer = try VAETrainer(config: cfg, comm: comm, zeroStage: o.zeroStage)
    if let dir = o.resume {
        let t0 = Date()
        try Checkpointing.load(trainer, from: dir)
        log(String(format: "resumed from %@ at step %ld (checkpoint load %.2fs)", dir, trainer.step, Date().timeIntervalSince(t0)))
    }
    if o.rank == 0 {
        log("training the causal VAE (\(trainer.vae.parameterCount) parameters) on \(cfg.data.size)x\(cfg.data.size)x\(cfg.data.frames) clips on \(o.worldSize) worker(s), ZeRO stage \(o.zeroStage), global batch \(cfg.train.batch_size) (\(cfg.train.batch_size / o.worldSize) per rank), \(cfg.train.lr_schedule.rawValue) lr \(cfg.train.lr), OpenBLAS \(BLAS.coreName)")
    }
    func save() throws {
        try saveCheckpoint(o, step: trainer.step, send: send, log: log) { try Checkpointing.save(trainer, runDir: o.runDir, keep: cfg.checkpoint.keep) }
    }
    var stopRequested = false
    var lastSaved = -1
    let lastStep = min(cfg.train.steps, o.stopAt ?? Int.max)
    let t0 = Date()
    var window: [Float] = []
    while trainer.step < lastStep {
        if try stopAgreed(control: control, comm: comm) { stopRequested = true; break }
        let s = try trainer.trainStep()
        heartbeat.setStep(trainer.step)
        if o.rank == 0 {
            var m = ControlMessage(type: .metrics)
            m.rank = 0; m.step = s.step + 1; m.loss = Double(s.loss); m.lr = Double(s.lr); m.grad_norm = Double(s.gradNorm)
            m.step_s = s.seconds; m.comm_s = s.commSeconds; m.samples = s.samples
            send(m)
            window.append(s.l1)
            if trainer.step % cfg.train.log_every == 0 || trainer.step == lastStep {
                log(String(format: "step %ld/%ld  L1 %.4f (mean of %ld)  KL %.1f  %.1fs", trainer.step, cfg.train.steps,
                           window.reduce(0, +) / Float(window.count), window.count, s.kl, Date().timeIntervalSince(t0)))
                window.removeAll()
            }
        }
        if cfg.checkpoint.every > 0 && trainer.step % cfg.checkpoint.every == 0 { try save(); lastSaved = trainer.step }
    }
    if lastSaved != trainer.step { try save() }
    if stopRequested {
        if o.rank == 0 { log("stopped on request at step \(trainer.step)") }
        return
    }
    if trainer.step >= cfg.train.steps {
        let e0 = Date()
        let psnr = try trainer.heldOutPSNR()
        if o.rank == 0 {
            log(String(format: "held-out PSNR %.2f dB over %d clips (eval %.1fs); training took %.1fs", psnr, cfg.data.held_out,
                       Date().timeIntervalSince(e0), e0.timeIntervalSince(t0)))
            let out = o.runDir + "/vae.h5"
            try Checkpointing.writeVAEAtomically(trainer.vae, to: out)
            log("wrote VAE weights to \(out) (hv-sample --vae \(out))")
        }
    }
}
