import ArgumentParser
import Foundation
import HVCheckpoint
import HVModel
import HVTensor
import HVTrain

/// `hv-ckpt`: inspect, consolidate and export checkpoints.
public struct CkptCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-ckpt",
        abstract: "Inspect, consolidate and export hv checkpoints (RUN_DIR/checkpoints/step-N).",
        subcommands: [InspectCkpt.self, ConsolidateCkpt.self, ExportCkpt.self])
    public init() {}
}

/// Full weights by official name, in manifest order, from a (sharded) checkpoint directory
/// (only the weights datasets are read; their checksums are verified).
public func consolidatedTensors(_ dir: String) throws -> (CheckpointManifest, [NamedTensor]) {
    let m = try CheckpointManifest.read(directory: dir)
    let units = try Checkpointing.readWeights(dir, m)
    var out: [NamedTensor] = []
    for u in m.units {
        let w = units[u.name]!
        for t in u.tensors {
            let n = t.shape.reduce(1, *)
            out.append(NamedTensor(name: t.name, shape: t.shape, values: Array(w[t.offset..<(t.offset + n)])))
        }
    }
    return (m, out)
}

/// Every fp32 dataset of a weights file (a consolidated `model.h5`: datasets at the root; or a
/// file with a `weights` group, like the parity fixtures), sorted by name, and its config text.
func weightsFileTensors(_ path: String) throws -> ([NamedTensor], config: String?) {
    let f = try H5File(path: path, mode: .readOnly)
    defer { try? f.close() }
    let g: H5Group = try f.kind(of: "weights") == .group ? f.group("weights") : f
    var out: [NamedTensor] = []
    for name in try g.children() where try g.kind(of: name) == .dataset {
        let ds = try g.dataset(name)
        out.append(NamedTensor(name: name, shape: try ds.shape(), values: try ds.read(as: Float.self)))
    }
    guard !out.isEmpty else { throw ValidationError("\(path) holds no weight datasets (at the root or under /weights)") }
    let config = ["model_config", "config"].lazy.compactMap { try? f.stringAttribute($0) }.first
    return (out, config)
}

struct InspectCkpt: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Print step, config, tensors and sizes; verify every checksum.")
    @Argument(help: "Checkpoint directory (…/checkpoints/step-N) or a run directory (uses `latest`).") var checkpoint: String
    @Flag(help: "List every tensor.") var tensors = false

    func run() throws {
        try runOrExit {
            let dir = try resolveCheckpoint(checkpoint)
            let m = try Checkpointing.verify(dir)
            print("checkpoint   \(dir)")
            print("step         \(m.step)   samples \(m.samples_seen)   tokens \(m.tokens_seen)")
            print("saved by     \(m.world_size) worker(s), ZeRO stage \(m.zero_stage), \(m.created)")
            print("data         epoch \(m.data_position.epoch), offset \(m.data_position.offset) of \(m.data_position.count)")
            print("model        \(m.model_config)")
            let count = m.units.reduce(0) { $0 + $1.count }
            print("tensors      \(m.units.reduce(0) { $0 + $1.tensors.count }) in \(m.units.count) units, \(count.formatted()) values (\(String(format: "%.1f", Double(count * 12) / 1e6)) MB with Adam state)")
            let kinds = try checksumKinds(dir, m)
            print("checksums    OK (every dataset read back and checked: \(kinds.joined(separator: ", ")))")
            if tensors { for u in m.units { for t in u.tensors { print("  \(t.name)  \(t.shape)") } } }
        }
    }
}

/// The checksum kinds used by a checkpoint's datasets (e.g. `hv-fletcher64x8`, or `fletcher32`
/// for checkpoints written before hv's own checksums).
func checksumKinds(_ dir: String, _ m: CheckpointManifest) throws -> [String] {
    var kinds = Set<String>()
    for s in m.units.first?.shards ?? [] {
        let f = try H5File(path: dir + "/" + s.file, mode: .readOnly)
        defer { try? f.close() }
        for u in m.units { for ds in ["weights", "exp_avg", "exp_avg_sq"] { kinds.insert(try ChecksummedArray.protection(f.dataset("units/\(u.name)/\(ds)"))) } }
    }
    return kinds.sorted()
}

/// A checkpoint directory, or the one a run directory's `checkpoints/latest` names.
func resolveCheckpoint(_ path: String) throws -> String {
    if FileManager.default.fileExists(atPath: path + "/manifest.json") { return path }
    for root in [path + "/checkpoints", path] {
        if let latest = try? String(contentsOfFile: root + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) {
            return root + "/" + latest
        }
    }
    throw ValidationError("\(path) is neither a checkpoint directory (no manifest.json) nor a run directory with checkpoints/latest")
}

struct ConsolidateCkpt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consolidate",
        abstract: "Write one HDF5 file with every full fp32 tensor under its official name (what hv-sample reads).")
    @Argument(help: "Checkpoint directory or run directory.") var checkpoint: String
    @Option(help: "Output .h5 file.") var out: String

    func run() throws {
        try runOrExit {
            let dir = try resolveCheckpoint(checkpoint)
            let (m, tensors) = try consolidatedTensors(dir)
            let tmp = out + ".tmp-\(getpid())"
            let f = try H5File(path: tmp, mode: .create)
            for t in tensors { try f.write(t.name, t.values, shape: t.shape, options: H5DatasetOptions(fletcher32: !t.values.isEmpty)) }
            try f.setAttribute("model_config", .string(m.model_config))
            try f.setAttribute("run_config", .string(m.run_config))
            try f.setAttribute("step", .int64(Int64(m.step)))
            try f.setAttribute("format", .string("hv consolidated weights v1: one fp32 dataset per official HunyuanVideo parameter name"))
            try f.close()
            try Durable.sync(tmp)
            try Durable.rename(tmp, out)
            stderrLine("hv-ckpt: wrote \(tensors.count) tensors (step \(m.step)) to \(out)")
        }
    }
}

struct ExportCkpt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export the weights as .safetensors (fp32), with official or diffusers tensor names.",
        discussion: """
        SOURCE is a checkpoint directory, a run directory (its `latest`), or a weights .h5 file \
        (hv-ckpt consolidate's output, or any file of official-name datasets at the root or under /weights).
        --naming official: the HunyuanVideo state-dict names (every tensor, including hv's text_encoder.*).
        --naming diffusers: the names of diffusers' HunyuanVideoTransformer3DModel (fused q/k/v split, the \
        final adaLN's (shift, scale) reordered to (scale, shift)); only the DiT's tensors are written, so the \
        file loads with load_state_dict(strict=True).
        """)
    enum Naming: String, ExpressibleByArgument, CaseIterable { case official, diffusers }

    @Argument(help: "Checkpoint directory, run directory, or weights .h5 file.") var checkpoint: String
    @Option(help: "Output .safetensors file.") var out: String
    @Option(help: "Format (only safetensors).") var format = "safetensors"
    @Option(help: "Tensor names: official (HunyuanVideo) or diffusers (HunyuanVideoTransformer3DModel).") var naming: Naming = .official

    func run() throws {
        try runOrExit {
            guard format == "safetensors" else { throw ValidationError("--format \(format): only safetensors is supported") }
            var tensors: [NamedTensor]
            var metadata = ["format": "pt", "hv_naming": naming.rawValue]
            if !FileManager.default.fileExists(atPath: checkpoint + "/manifest.json"), H5File.isHDF5(path: checkpoint) {
                let (t, config) = try weightsFileTensors(checkpoint)
                tensors = t
                if let config { metadata["model_config"] = config }
            } else {
                let (m, t) = try consolidatedTensors(try resolveCheckpoint(checkpoint))
                tensors = t
                metadata["hv_step"] = "\(m.step)"
                metadata["model_config"] = m.model_config
            }
            if naming == .diffusers {
                let skipped = tensors.filter { $0.name.hasPrefix("text_encoder.") }
                tensors.removeAll { $0.name.hasPrefix("text_encoder.") }
                tensors = try DiffusersNaming.officialToDiffusers(tensors)
                if !skipped.isEmpty { stderrLine("hv-ckpt: left out \(skipped.count) text_encoder.* tensors (not part of diffusers' transformer)") }
            }
            try Safetensors.write(tensors, metadata: metadata, to: out)
            stderrLine("hv-ckpt: wrote \(tensors.count) tensors (\(naming.rawValue) names) to \(out)")
        }
    }
}
