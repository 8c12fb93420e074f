import Foundation
import HVCheckpoint
import HVModel

/// Sharded, atomic HDF5 checkpoints of a VAE run: the same directory layout, manifest and
/// protocol as the DiT's (`Checkpointing.save(engine:...)`), with `kind: "vae"`, the VAE
/// config as `model_config` and the VAE run config as `run_config`. The data and the posterior
/// noise are functions of (train.seed, step), so the step is the whole data/RNG position.
extension Checkpointing {
    @discardableResult
    public static func save(_ trainer: VAETrainer, runDir: String, keep: Int) throws -> String {
        let model = try vaeConfigJSON(trainer.config.vae)
        return try save(engine: trainer.engine, comm: trainer.comm, step: trainer.step, runDir: runDir, keep: keep) { units in
            let d = trainer.config.data
            var m = CheckpointManifest(
                step: trainer.step, samples_seen: trainer.step * trainer.config.train.batch_size, tokens_seen: 0,
                world_size: trainer.comm.worldSize, zero_stage: trainer.engine.stage, run_config: trainer.config.json(),
                model_config: model, data_position: .init(epoch: 0, offset: trainer.step, count: d.count, seed: d.seed),
                optimizer_step: trainer.optimizer.step,
                rng: "derived: batch HVRandom(train.seed).split(\"vae-step\").split(step); noise .split(\"vae-noise\").split(step).split(position)",
                units: units)
            m.kind = "vae"
            return m
        }
    }

    /// Restores a VAE trainer from a VAE checkpoint (any world size, ZeRO stage 0-2).
    public static func load(_ trainer: VAETrainer, from dir: String) throws {
        try requireVAE(dir)
        let m = try load(engine: trainer.engine, comm: trainer.comm, modelConfig: try vaeConfigJSON(trainer.config.vae), from: dir)
        trainer.restore(step: m.step)
        trainer.optimizer.setStep(m.optimizer_step)
    }

    /// Writes a VAE checkpoint's weights as the single HDF5 file `hv-coord train-vae --out`
    /// writes (official names, `vae_config` attribute), which `hv-sample --vae` and
    /// `hv-data encode --vae` read. Atomic: written beside `out` and renamed over it.
    public static func exportVAE(checkpoint dir: String, to out: String) throws {
        try requireVAE(dir)
        let m = try verify(dir)
        let cfg: VAEConfig
        do { cfg = try JSONDecoder().decode(VAEConfig.self, from: Data(m.model_config.utf8)) } catch {
            throw CheckpointError.corrupt(file: dir + "/manifest.json", detail: "model_config is not a VAE config: \(error)")
        }
        do { try cfg.validate() } catch {
            throw CheckpointError.corrupt(file: dir + "/manifest.json", detail: "model_config is not a valid VAE config: \(error)")
        }
        let vae = CausalVAE(config: cfg, seed: 0)
        let params = Dictionary(uniqueKeysWithValues: vae.namedParameters())
        let weights = try readWeights(dir, m)
        var filled = 0
        for u in m.units {
            guard let flat = weights[u.name] else { continue }
            for t in u.tensors {
                guard let p = params[t.name], p.shape == t.shape else {
                    throw CheckpointError.corrupt(file: dir + "/manifest.json", detail: "tensor \(t.name) \(t.shape) is not a parameter of this VAE config")
                }
                flat.withUnsafeBufferPointer { p.pointer.update(from: $0.baseAddress! + t.offset, count: p.count) }
                filled += 1
            }
        }
        guard filled == params.count else {
            throw CheckpointError.incomplete(directory: dir, detail: "\(filled) of the VAE's \(params.count) tensors are in the checkpoint")
        }
        try writeVAEAtomically(vae, to: out)
    }

    /// `VAEWeights.save` to a temporary file beside `out`, fsynced, then renamed over `out`.
    public static func writeVAEAtomically(_ vae: CausalVAE, to out: String) throws {
        let tmp = out + ".tmp-\(getpid())"
        do {
            try VAEWeights.save(vae, to: tmp)
            try Durable.sync(tmp)
            try Durable.rename(tmp, out)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
    }

    /// A VAE config as checkpoint manifests and the weights file's `vae_config` attribute store it (sorted keys).
    static func vaeConfigJSON(_ c: VAEConfig) throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try enc.encode(c), as: UTF8.self)
    }

    /// A DiT checkpoint's manifest has no kind; a VAE run's ("vae") is refused with what to do instead.
    public static func requireDiT(_ m: CheckpointManifest, _ dir: String) throws {
        if let kind = m.kind {
            throw CheckpointError.notFound("\(dir) is a \(kind) checkpoint, not a DiT checkpoint\(kind == "vae" ? " (for hv-sample, export it with hv-coord export-vae --checkpoint \(dir) --out VAE.h5 and pass --vae VAE.h5)" : "")")
        }
    }

    static func requireVAE(_ dir: String) throws {
        let m = try CheckpointManifest.read(directory: dir)
        guard m.kind == "vae" else {
            throw CheckpointError.notFound("\(dir) is a \(m.kind ?? "DiT") checkpoint, not a VAE checkpoint (its manifest has no kind \"vae\")")
        }
    }
}
