import Foundation
import HVCheckpoint
import HVComm
import HVModel
import HVParallel
import HVTensor

/// A checkpoint save that did not complete; the previous checkpoint and `latest` are intact.
public enum CheckpointSaveError: Error, CustomStringConvertible {
    /// This rank's own failure (the detail names the path and errno).
    case failed(step: Int, directory: String, detail: String)
    /// Another rank failed; its log has the reason.
    case peerFailed(step: Int, directory: String, ranks: [Int])

    public var description: String {
        switch self {
        case .failed(let s, let d, let detail):
            "checkpoint save at step \(s) (\(d)) failed: \(detail); the previous checkpoint and `latest` are unchanged"
        case .peerFailed(let s, let d, let r):
            "checkpoint save at step \(s) (\(d)) failed on rank(s) \(r.map(String.init).joined(separator: ", ")) (see their logs); the previous checkpoint and `latest` are unchanged"
        }
    }
}

/// Sharded, atomic HDF5 checkpoints of a (possibly distributed) training run.
///
/// Save (collective): rank 0 makes `checkpoints/.tmp-step-N`; every rank writes and fsyncs its
/// shard file there; rank 0 writes `manifest.json` (atomically), renames the directory to
/// `step-N`, fsyncs the parent, then atomically replaces `latest`. A crash at any point leaves
/// the previous checkpoint and `latest` intact: `latest` only ever names a renamed, complete
/// directory. Datasets are contiguous with hv's block checksums (`ChecksummedArray`); older
/// checkpoints with HDF5's Fletcher-32 filter still load.
///
/// A unit is sharded over the ranks that hold it: all ranks, or under pipeline parallelism the
/// ranks of its stage (each stage writes its own units; the manifest lists every unit with the
/// file and range of each shard). Units are collections of tensors under their official names.
///
/// Load: a unit saved exactly as this run shards it (same tensors, same ranks and ranges) is
/// read by each rank from its own shard file only (stages 0-2 then all-gather the replicated
/// parts over the unit's ranks); otherwise (another world size, mesh or unit layout) each rank
/// reads, by hyperslab and tensor by tensor, only the element ranges it keeps, from whichever
/// units and files hold them.
public enum Checkpointing {
    public static func directoryName(step: Int) -> String { String(format: "step-%07d", step) }


    /// Saves the trainer's state; every rank must call it at the same step. Returns the directory.
    ///
    /// Each phase (make the directory, write the shards, publish) ends with an all-reduce of
    /// per-rank failure flags, so a failure anywhere (disk full, directory not writable) makes
    /// every rank throw at the same point instead of leaving its peers waiting in a barrier.
    /// On failure the partial `.tmp-step-N` is removed (best effort) and the previous checkpoint
    /// and `latest` are untouched. Throws `CheckpointSaveError`.
    @discardableResult
    public static func save(_ trainer: Trainer, runDir: String, keep: Int) throws -> String {
        let cfg = trainer.config
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let modelConfig = String(decoding: try enc.encode(cfg.model), as: UTF8.self)
        let layout = trainer.unitPlacement.map { unitEntry(name: $0.name, params: $0.params, ranks: $0.ranks) }
        return try save(engine: trainer.engine, comm: trainer.comm, step: trainer.step, runDir: runDir, keep: keep, layout: layout) { units in
            CheckpointManifest(
                step: trainer.step, samples_seen: trainer.samplesSeen,
                tokens_seen: trainer.samplesSeen * cfg.model.videoTokens(latentT: cfg.data.frames, latentH: cfg.data.height, latentW: cfg.data.width),
                world_size: trainer.comm.worldSize, zero_stage: trainer.engine.stage, run_config: cfg.json(),
                model_config: modelConfig,
                data_position: .init(epoch: trainer.order.epoch, offset: trainer.order.offset, count: trainer.order.count, seed: trainer.order.seed),
                optimizer_step: trainer.optimizer.step, rng: "derived: HVRandom(train.seed).split(purpose).split(step).split(sample)",
                units: units)
        }
    }

    /// A unit's manifest entry: its tensors at their offsets in the unit's flat order, sharded
    /// over `ranks` (shard j, by `shardRange`, in rank `ranks[j]`'s file).
    public static func unitEntry(name: String, params: [(String, Tensor)], ranks: [Int]) -> CheckpointManifest.UnitEntry {
        var tensors: [CheckpointManifest.TensorEntry] = [], n = 0
        for (tensorName, t) in params {
            tensors.append(.init(name: tensorName, shape: t.shape, offset: n))
            n += t.count
        }
        let count = n
        return .init(name: name, count: count, tensors: tensors, shards: ranks.enumerated().map { j, r in
            let range = shardRange(count: count, rank: j, world: ranks.count)
            return .init(rank: r, file: CheckpointManifest.rankFile(r), start: range.lowerBound, end: range.upperBound)
        })
    }

    /// The model-agnostic save behind `save(_:runDir:keep:)` (DiT) and `save(_ vae:...)`: each
    /// rank writes its shards of the engine's units; rank 0 writes a manifest that `manifest`
    /// builds from `layout`, every unit of the model with its shards (default: the engine's units
    /// over all ranks). Collective; see `save(_:runDir:keep:)` for the protocol.
    @discardableResult
    public static func save(engine: ZeroEngine, comm: Communicator, step: Int, runDir: String, keep: Int,
                            layout: [CheckpointManifest.UnitEntry]? = nil,
                            manifest makeManifest: ([CheckpointManifest.UnitEntry]) throws -> CheckpointManifest) throws -> String {
        let layout = layout ?? engine.units.map { unitEntry(name: $0.name, params: $0.params, ranks: Array(0..<comm.worldSize)) }
        for u in engine.units {
            let mine = layout.first { $0.name == u.name }?.shards.first { $0.rank == comm.rank }
            precondition(mine.map { $0.start..<$0.end } == u.shard, "checkpoint layout: unit \(u.name) is not this rank's shard \(u.shard)")
        }
        let root = runDir + "/checkpoints"
        let name = directoryName(step: step)
        let tmp = root + "/.tmp-" + name, final = root + "/" + name
        let fm = FileManager.default

        func phase(_ body: () throws -> Void) throws {
            var local: Error?
            do { try body() } catch { local = error }
            var flags = [Float](repeating: 0, count: comm.worldSize)
            if local != nil { flags[comm.rank] = 1 }
            try flags.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: comm.worldSize) }
            let failed = flags.indices.filter { flags[$0] > 0 }
            if failed.isEmpty { return }
            if comm.rank == 0 { try? fm.removeItem(atPath: tmp) }
            if let local { throw CheckpointSaveError.failed(step: step, directory: final, detail: "\(local)") }
            throw CheckpointSaveError.peerFailed(step: step, directory: final, ranks: failed)
        }

        try phase {
            guard comm.rank == 0 else { return }
            if !fm.fileExists(atPath: root) {
                do { try fm.createDirectory(atPath: runDir, withIntermediateDirectories: true) } catch {
                    throw CheckpointError.io(path: runDir, detail: "cannot create the run directory: \(Durable.diagnose(runDir) ?? "\(error)")")
                }
                try Durable.makeDirectory(root)
            }
            if fm.fileExists(atPath: tmp) { try fm.removeItem(atPath: tmp) }
            try Durable.makeDirectory(tmp)
        }
        let path = tmp + "/" + CheckpointManifest.rankFile(comm.rank)
        try phase {
            do {
                let f = try H5File(path: path, mode: .create)
                try f.setAttribute("rank", .int64(Int64(comm.rank)))
                try f.setAttribute("world_size", .int64(Int64(comm.worldSize)))
                try f.setAttribute("step", .int64(Int64(step)))
                for (i, u) in engine.units.enumerated() {
                    let g = try f.createGroup("units/" + u.name)
                    try engine.withShardState(i) { w, m, v in
                        try ChecksummedArray.write(g, "weights", w)
                        try ChecksummedArray.write(g, "exp_avg", m)
                        try ChecksummedArray.write(g, "exp_avg_sq", v)
                    }
                    try g.setAttribute("start", .int64(Int64(u.shard.lowerBound)))
                    try g.setAttribute("end", .int64(Int64(u.shard.upperBound)))
                }
                try f.close()
                try Durable.sync(path)
            } catch let e as CheckpointError { throw e } catch {
                let why = Durable.diagnose(path).map { $0 + "; " } ?? ""
                throw CheckpointError.io(path: path, detail: "writing the shard failed: \(why)\(error)")
            }
        }
        try phase {
            guard comm.rank == 0 else { return }
            let manifest = try makeManifest(layout)
            try Durable.write(try manifest.encoded(), to: tmp + "/manifest.json")
            try Durable.sync(tmp)
            if fm.fileExists(atPath: final) { try fm.removeItem(atPath: final) }
            try Durable.rename(tmp, final)
            try Durable.sync(root)
            // If only this last write fails, `latest` still names the previous complete checkpoint.
            try Durable.write(Data((name + "\n").utf8), to: root + "/latest")
            prune(root: root, keep: keep, current: name)
        }
        return final
    }

    /// Deletes all but the newest `keep` step directories (never `current`).
    static func prune(root: String, keep: Int, current: String) {
        let fm = FileManager.default
        let steps = ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasPrefix("step-") }.sorted()
        for old in steps.dropLast(keep) where old != current { try? fm.removeItem(atPath: root + "/" + old) }
        for stale in ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter({ $0.hasPrefix(".tmp-") }) where stale != ".tmp-" + current {
            try? fm.removeItem(atPath: root + "/" + stale)
        }
    }

    static let datasets = ["weights", "exp_avg", "exp_avg_sq"]

    /// Reads and checks every dataset of a checkpoint (hv's block checksums, or HDF5's
    /// Fletcher-32 for older checkpoints). Errors name the file and the dataset.
    public static func verify(_ dir: String) throws -> CheckpointManifest {
        let m = try CheckpointManifest.read(directory: dir)
        var scratch: [Float] = []
        for r in 0..<m.world_size {
            let path = dir + "/" + CheckpointManifest.rankFile(r)
            guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError.incomplete(directory: dir, detail: "missing \(CheckpointManifest.rankFile(r))") }
            let f: H5File
            do { f = try H5File(path: path, mode: .readOnly) } catch { throw CheckpointError.corrupt(file: path, detail: "\(error)") }
            defer { try? f.close() }
            for u in m.units {
                guard let shard = u.shards.first(where: { $0.rank == r }) else { continue }
                for ds in datasets {
                    let name = "units/\(u.name)/\(ds)"
                    do {
                        let n = try f.dataset(name).count()
                        guard n == shard.end - shard.start else {
                            throw CheckpointError.corrupt(file: path, detail: "dataset \(name) has \(n) values, manifest says \(shard.end - shard.start)")
                        }
                        if scratch.count < n { scratch = [Float](repeating: 0, count: n) }
                        try scratch.withUnsafeMutableBufferPointer { try ChecksummedArray.read(f, name, into: UnsafeMutableBufferPointer(rebasing: $0[0..<n])) }
                    } catch let e as CheckpointError { throw e } catch {
                        throw CheckpointError.corrupt(file: path, detail: "dataset \(name): \(error)")
                    }
                }
            }
        }
        return m
    }

    /// Open shard files of one checkpoint, by rank, for ranged reads.
    final class ShardReader {
        let dir: String
        let manifest: CheckpointManifest
        private var files: [Int: H5File] = [:]
        init(_ dir: String, _ m: CheckpointManifest) { self.dir = dir; manifest = m }
        deinit { close() }
        func close() { for (_, f) in files { try? f.close() }; files = [:] }

        private func file(_ s: CheckpointManifest.ShardEntry) throws -> H5File {
            if let f = files[s.rank] { return f }
            let path = dir + "/" + s.file
            guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError.incomplete(directory: dir, detail: "missing \(s.file)") }
            do { files[s.rank] = try H5File(path: path, mode: .readOnly) } catch { throw CheckpointError.corrupt(file: path, detail: "\(error)") }
            return files[s.rank]!
        }

        /// Elements `range` of unit `u`'s flat dataset `ds` (weights / exp_avg / exp_avg_sq),
        /// read from the shard files that hold them, checking the checksums of what is read.
        func read(_ u: CheckpointManifest.UnitEntry, _ ds: String, _ range: Range<Int>) throws -> [Float] {
            let name = "units/\(u.name)/\(ds)"
            let shards = u.shards.filter { max($0.start, range.lowerBound) < min($0.end, range.upperBound) }
            // Every shard's size is checked against the manifest before the output is allocated
            // (a corrupt count must not become a huge allocation).
            for s in shards {
                let f = try file(s)
                let n: Int
                do { n = try f.dataset(name).count() } catch { throw CheckpointError.corrupt(file: f.filePath, detail: "dataset \(name): \(error)") }
                guard n == s.end - s.start else {
                    throw CheckpointError.corrupt(file: f.filePath, detail: "dataset \(name) has \(n) values, manifest says \(s.end - s.start)")
                }
            }
            var out = [Float](repeating: 0, count: range.count)
            try out.withUnsafeMutableBufferPointer { buf in
                for s in shards {
                    let lo = max(s.start, range.lowerBound), hi = min(s.end, range.upperBound)
                    let f = try file(s)
                    do {
                        try ChecksummedArray.read(f, name, range: (lo - s.start)..<(hi - s.start),
                                                  into: UnsafeMutableBufferPointer(rebasing: buf[(lo - range.lowerBound)..<(hi - range.lowerBound)]))
                    } catch let e as CheckpointError { throw e } catch {
                        throw CheckpointError.corrupt(file: f.filePath, detail: "dataset \(name): \(error)")
                    }
                }
            }
            return out
        }

        /// Where each tensor is saved, by name: its unit and entry.
        private lazy var tensorIndex: [String: (unit: CheckpointManifest.UnitEntry, tensor: CheckpointManifest.TensorEntry)] = {
            var index: [String: (CheckpointManifest.UnitEntry, CheckpointManifest.TensorEntry)] = [:]
            for u in manifest.units { for t in u.tensors { index[t.name] = (u, t) } }
            return index
        }()

        /// Throws unless every tensor of `params` is saved under its name with its shape.
        func check(_ params: [(String, Tensor)]) throws {
            for (name, t) in params {
                guard let saved = tensorIndex[name] else {
                    throw CheckpointError.corrupt(file: dir + "/manifest.json", detail: "no tensor \(name) (this model has it)")
                }
                guard saved.tensor.shape == t.shape else {
                    throw CheckpointError.corrupt(file: dir + "/manifest.json", detail: "tensor \(name) is \(saved.tensor.shape) in the checkpoint, \(t.shape) in this model")
                }
            }
        }

        /// Elements `range` of dataset `ds` in the flat order of `params` laid out at `offsets` (a
        /// unit of this run), read tensor by tensor from whichever saved units hold them, so the
        /// saved unit layout may differ (another mesh). Call `check(params)` first.
        func read(_ params: [(String, Tensor)], offsets: [Int], _ ds: String, _ range: Range<Int>) throws -> [Float] {
            var out = [Float](repeating: 0, count: range.count)
            for (k, (name, t)) in params.enumerated() {
                let lo = max(range.lowerBound, offsets[k]), hi = min(range.upperBound, offsets[k] + t.count)
                guard lo < hi, let saved = tensorIndex[name] else { continue }
                let at = saved.tensor.offset - offsets[k]
                out.replaceSubrange((lo - range.lowerBound)..<(hi - range.lowerBound), with: try read(saved.unit, ds, (lo + at)..<(hi + at)))
            }
            return out
        }
    }

    /// Full flat weights and Adam moments of every unit, reassembled from the shard files.
    public static func readUnits(_ dir: String, _ m: CheckpointManifest) throws -> [String: (weights: [Float], expAvg: [Float], expAvgSq: [Float])] {
        let reader = ShardReader(dir, m)
        defer { reader.close() }
        var out: [String: (weights: [Float], expAvg: [Float], expAvgSq: [Float])] = [:]
        for u in m.units {
            let all = 0..<u.count
            out[u.name] = (try reader.read(u, "weights", all), try reader.read(u, "exp_avg", all), try reader.read(u, "exp_avg_sq", all))
        }
        return out
    }

    /// Reads (and checks) rank `rank`'s own shard of every unit: the disk part of a resume with
    /// the saved world size (`load` then all-gathers the replicated parts). Returns the bytes read.
    public static func readOwnShard(_ dir: String, rank: Int) throws -> Int {
        let m = try CheckpointManifest.read(directory: dir)
        let reader = ShardReader(dir, m)
        defer { reader.close() }
        var bytes = 0
        for u in m.units {
            guard let s = u.shards.first(where: { $0.rank == rank }) else { continue }
            for ds in datasets { bytes += 4 * (try reader.read(u, ds, s.start..<s.end)).count }
        }
        return bytes
    }

    /// Full flat weights of every unit (no optimizer state: what consolidation and export need).
    public static func readWeights(_ dir: String, _ m: CheckpointManifest) throws -> [String: [Float]] {
        let reader = ShardReader(dir, m)
        defer { reader.close() }
        var out: [String: [Float]] = [:]
        for u in m.units { out[u.name] = try reader.read(u, "weights", 0..<u.count) }
        return out
    }

    /// Field names whose values differ between two model configs (JSON objects).
    public static func differingFields(_ a: String, _ b: String) -> [String] {
        guard let x = try? JSONSerialization.jsonObject(with: Data(a.utf8)) as? [String: Any],
              let y = try? JSONSerialization.jsonObject(with: Data(b.utf8)) as? [String: Any] else { return ["(unreadable config)"] }
        return Set(x.keys).union(y.keys).sorted().filter { k in
            "\(x[k].map { "\($0)" } ?? "-")" != "\(y[k].map { "\($0)" } ?? "-")"
        }.map { k in "\(k) (checkpoint \(x[k].map { "\($0)" } ?? "absent"), run \(y[k].map { "\($0)" } ?? "absent"))" }
    }

    /// Restores a trainer (any world size / stage) from a checkpoint directory.
    public static func load(_ trainer: Trainer, from dir: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let mine = String(decoding: try enc.encode(trainer.config.model), as: UTF8.self)
        let layout = trainer.unitPlacement.map { unitEntry(name: $0.name, params: $0.params, ranks: $0.ranks) }
        try requireDiT(try CheckpointManifest.read(directory: dir), dir)
        let m = try load(engine: trainer.engine, comm: trainer.comm, modelConfig: mine, from: dir, layout: layout)
        let p = m.data_position
        guard p.epoch >= 0, p.count >= 1, (0...p.count).contains(p.offset) else {
            throw CheckpointError.corrupt(file: dir + "/manifest.json", detail: "data_position epoch \(p.epoch), offset \(p.offset) of \(p.count): expected epoch >= 0, count >= 1 and 0 <= offset <= count")
        }
        try trainer.restore(step: m.step, samplesSeen: m.samples_seen, order: DataOrder(count: p.count, seed: p.seed, epoch: p.epoch, offset: p.offset))
        trainer.optimizer.setStep(m.optimizer_step)
    }

    /// The model-agnostic part of a load: checks the model config (JSON, compared field by
    /// field) and that every tensor of the engine's units is saved with its shape, then restores
    /// every unit's weights and Adam moments. `layout` is this run's (as `save` takes it; default:
    /// the engine's units over all ranks). Collective over the engine's ranks. Returns the
    /// manifest (step, data position, optimizer step).
    @discardableResult
    public static func load(engine: ZeroEngine, comm: Communicator, modelConfig mine: String, from dir: String,
                            layout: [CheckpointManifest.UnitEntry]? = nil) throws -> CheckpointManifest {
        let m = try CheckpointManifest.read(directory: dir)
        let diff = differingFields(m.model_config, mine)
        if !diff.isEmpty { throw CheckpointError.configMismatch(checkpoint: dir, fields: diff) }
        let layout = layout ?? engine.units.map { unitEntry(name: $0.name, params: $0.params, ranks: Array(0..<comm.worldSize)) }
        let reader = ShardReader(dir, m)
        defer { reader.close() }
        for u in engine.units { try reader.check(u.params) }
        // A unit saved as this run shards it: a rank reads only its own file and all-gathers the
        // rest (exact: fp32 on the wire, not with --bf16-wire). Every rank of a unit decides alike.
        let exactWire = (comm as? ZMQRingCommunicator).map { $0.wireDType == .float32 } ?? true
        for (i, u) in engine.units.enumerated() {
            let saved = m.units.first { $0.name == u.name }
            if exactWire, let saved, saved == layout.first(where: { $0.name == u.name }) {
                try engine.loadShard(i, weights: try reader.read(saved, "weights", u.shard),
                                     expAvg: try reader.read(saved, "exp_avg", u.shard), expAvgSq: try reader.read(saved, "exp_avg_sq", u.shard))
                continue
            }
            // The same unit sharded otherwise is read by unit range, anything else tensor by tensor.
            let sameUnit = saved.map { $0.tensors == unitEntry(name: u.name, params: u.params, ranks: []).tensors } ?? false
            func read(_ ds: String, _ range: Range<Int>) throws -> [Float] {
                if sameUnit, let saved { return try reader.read(saved, ds, range) }
                return try reader.read(u.params, offsets: u.offsets, ds, range)
            }
            let w = engine.stage == 3 ? u.shard : 0..<u.count, mom = engine.stage == 0 ? 0..<u.count : u.shard
            engine.loadOwned(i, weights: try read("weights", w), expAvg: try read("exp_avg", mom), expAvgSq: try read("exp_avg_sq", mom))
        }
        return m
    }

    /// `auto`: the checkpoint `latest` names, or the newest complete one, skipping (and
    /// reporting) corrupt ones. Otherwise the given directory, verified. nil when there is none.
    public static func resolve(_ resume: String, runDir: String, log: (String) -> Void) throws -> String? {
        if resume != "auto" {
            _ = try verify(resume)
            return resume
        }
        let root = runDir + "/checkpoints"
        let fm = FileManager.default
        var candidates = ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasPrefix("step-") }.sorted().reversed().map { $0 }
        if let latest = try? String(contentsOfFile: root + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
           let i = candidates.firstIndex(of: latest) {
            candidates.remove(at: i)
            candidates.insert(latest, at: 0)
        }
        for c in candidates {
            do {
                _ = try verify(root + "/" + c)
                return root + "/" + c
            } catch {
                log("hv: skipping checkpoint \(root)/\(c): \(error); falling back to an older one")
            }
        }
        return nil
    }
}
