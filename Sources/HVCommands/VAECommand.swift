import ArgumentParser
import Foundation
import HVCheckpoint
import HVModel
import HVTensor
import HVTrain

struct TrainVAECommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-vae",
        abstract: "Train the causal 3D VAE in this process on synthetic clips (L1 or MSE, + KL); report held-out PSNR; save HDF5 weights.",
        discussion: "Data parallel over several workers: hv-coord launch --nodes HOSTS --config VAE_RUN.yaml (writes RUN_DIR/vae.h5).")

    @Option(help: "VAE run config (YAML), e.g. configs/runs/vae-tiny.yaml.") var config: String
    @Option(help: "Override train.steps.") var steps: Int?
    @Option(help: "Override train.lr (the peak learning rate), e.g. lower for a --init continuation.") var lr: Double?
    @Option(help: "Write the trained weights (official names, vae_config attribute) to this HDF5 file; with --psnr-every, also at every PSNR report.") var out: String?
    @Option(help: "Also report held-out PSNR every N steps (0 = only at the end), and write --out then.") var psnrEvery = 0
    @Option(name: .customLong("init"),
            help: "Start from the weights of this file (written by train-vae --out with the same VAE config), e.g. an image-only stage's for the video stage; the optimizer and LR schedule start afresh.")
    var initWeights: String?
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        try runOrExit {
            threads.apply()
            var cfg = try VAERunConfig.load(path: config)
            if let steps { cfg.train.steps = steps }
            if let lr { cfg.train.lr = lr }
            try cfg.validate(file: config)
            let trainer = try VAETrainer(config: cfg)
            if let initWeights {
                try VAEWeights.load(into: trainer.vae, path: initWeights)
                stderrLine("hv: starting from the weights in \(initWeights)")
            }
            stderrLine("hv: training the causal VAE (\(trainer.vae.parameterCount.formatted()) parameters) on \(cfg.data.size)x\(cfg.data.size)x\(cfg.data.frames) clips for \(cfg.train.steps) steps")
            let t0 = Date()
            var window: [Float] = []
            let lossName = cfg.train.recon_loss == .mse ? "MSE" : "L1"
            for s in 0..<cfg.train.steps {
                let stats = try trainer.trainStep()
                window.append(stats.l1)
                if (s + 1) % cfg.train.log_every == 0 || s + 1 == cfg.train.steps {
                    outLine(String(format: "step %5ld/%ld  %@ %.4f  lr %.2e  %.1fs", s + 1, cfg.train.steps, lossName, window.reduce(0, +) / Float(window.count),
                                   stats.lr, Date().timeIntervalSince(t0)))
                    window.removeAll()
                }
                if psnrEvery > 0, (s + 1) % psnrEvery == 0, s + 1 < cfg.train.steps {
                    outLine(String(format: "step %5d  held-out PSNR %.2f dB", s + 1, try trainer.heldOutPSNR()))
                    if let out {
                        // Keep what a long run has learnt if it is stopped before the end.
                        try Checkpointing.writeVAEAtomically(trainer.vae, to: out)
                        stderrLine("hv: wrote the step-\(s + 1) VAE weights to \(out)")
                    }
                }
            }
            let psnr = try trainer.heldOutPSNR()
            outLine(String(format: "held-out PSNR %.2f dB over %d clips; training took %.1fs", psnr, cfg.data.held_out, Date().timeIntervalSince(t0)))
            if let out {
                try Checkpointing.writeVAEAtomically(trainer.vae, to: out)
                stderrLine("hv: wrote VAE weights to \(out)")
            }
        }
    }
}

struct ExportVAECommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-vae",
        abstract: "Consolidate a sharded VAE checkpoint (from hv-coord launch) into the single HDF5 file train-vae --out writes (for hv-sample --vae).")

    @Option(help: "A VAE checkpoint directory (RUN_DIR/checkpoints/step-N) or a run directory (its latest checkpoint).") var checkpoint: String
    @Option(help: "Output HDF5 file.") var out: String

    func run() throws {
        try runOrExit {
            var dir = checkpoint
            if !FileManager.default.fileExists(atPath: dir + "/manifest.json") {
                guard let latest = try Checkpointing.resolve("auto", runDir: checkpoint, log: stderrLine) else {
                    throw ValidationError("\(checkpoint): neither a checkpoint directory nor a run directory with checkpoints")
                }
                dir = latest
            }
            try Checkpointing.exportVAE(checkpoint: dir, to: out)
            stderrLine("hv: wrote the VAE weights of \(dir) to \(out)")
        }
    }
}
