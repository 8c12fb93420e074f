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

/// Full tensors by official name, in manifest order, from a (sharded) checkpoint directory.
public func consolidatedTensors(_ dir: String) throws -> (CheckpointManifest, [(String, [Int], [Float])]) {
    let m = try Checkpointing.verify(dir)
    let units = try Checkpointing.readUnits(dir, m)
    var out: [(String, [Int], [Float])] = []
    for u in m.units {
        let w = units[u.name]!.weights
        for t in u.tensors {
            let n = t.shape.reduce(1, *)
            out.append((t.name, t.shape, Array(w[t.offset..<(t.offset + n)])))
        }
    }
    return (m, out)
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
            print("checksums    OK (every dataset read back through HDF5's fletcher32 filter)")
            if tensors { for u in m.units { for t in u.tensors { print("  \(t.name)  \(t.shape)") } } }
        }
    }
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
            for (name, shape, values) in tensors { try f.write(name, values, shape: shape, options: H5DatasetOptions(fletcher32: true)) }
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
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Export the weights as .safetensors (fp32).")
    @Argument(help: "Checkpoint directory or run directory.") var checkpoint: String
    @Option(help: "Output file.") var out: String
    @Option(help: "Format (safetensors).") var format = "safetensors"
    @Option(help: "Tensor names: official (HunyuanVideo state dict).") var naming = "official"

    func run() throws {
        try runOrExit {
            guard format == "safetensors" else { throw ValidationError("--format: only safetensors is supported") }
            guard naming == "official" else { throw ValidationError("--naming: only `official` is implemented so far (diffusers naming is not)") }
            let (m, tensors) = try consolidatedTensors(try resolveCheckpoint(checkpoint))
            try writeSafetensors(tensors, metadata: ["format": "pt", "hv_step": "\(m.step)", "model_config": m.model_config], to: out)
            stderrLine("hv-ckpt: wrote \(tensors.count) tensors to \(out)")
        }
    }
}

/// safetensors: 8-byte little-endian header length, a JSON header, then the raw little-endian data.
public func writeSafetensors(_ tensors: [(String, [Int], [Float])], metadata: [String: String], to path: String) throws {
    var header: [String: Any] = ["__metadata__": metadata]
    var offset = 0
    for (name, shape, values) in tensors {
        header[name] = ["dtype": "F32", "shape": shape, "data_offsets": [offset, offset + values.count * 4]]
        offset += values.count * 4
    }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while json.count % 8 != 0 { json.append(0x20) }  // pad with spaces (allowed) to keep the data 8-byte aligned
    var data = Data()
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { data.append(contentsOf: $0) }
    data.append(json)
    for (_, _, values) in tensors { values.withUnsafeBytes { data.append(contentsOf: $0) } }
    try Durable.write(data, to: path)
}
