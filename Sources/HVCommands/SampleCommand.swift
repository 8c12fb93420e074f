import ArgumentParser
import Foundation
import HVCheckpoint
import HVModel
import HVTensor
import HVTrain

/// `hv-sample`: evaluates and samples trained DiTs.
public struct SampleCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-sample",
        abstract: "Evaluate or sample a trained HunyuanVideo DiT.",
        subcommands: [GenerateCommand.self, EvalPromptsCommand.self, VelocityCommand.self],
        defaultSubcommand: GenerateCommand.self)
    public init() {}
}

/// Reads a DiT whose weights are HDF5 datasets named by the official state-dict keys, at the
/// file root or under `weights/`. The model config comes from `--model-config` or from the
/// file's `config`/`model_config` attribute (JSON of the model fields).
public func loadDiT(weightsPath: String, modelConfigPath: String?) throws -> HunyuanDiT {
    let file = try H5File(path: weightsPath, mode: .readOnly)
    defer { try? file.close() }
    var config: DiTConfig
    if let modelConfigPath {
        config = try loadModelConfig(path: modelConfigPath)
    } else {
        guard let attr = ["model_config", "config"].first(where: { (try? file.hasAttribute($0)) == true }) else {
            throw ValidationError("\(weightsPath) has no 'model_config' attribute: pass --model-config configs/models/<name>.yaml")
        }
        let json = try file.stringAttribute(attr)
        do { config = try JSONDecoder().decode(DiTConfig.self, from: Data(json.utf8)) } catch {
            throw ValidationError("\(weightsPath): attribute '\(attr)' is not a model config: \(error)")
        }
        do { try config.validate() } catch { throw ValidationError("\(weightsPath): attribute '\(attr)': \(error)") }
    }
    let model = HunyuanDiT(config: config, seed: 0)
    let group: H5Group = (try file.kind(of: "weights")) == .group ? try file.group("weights") : file
    try ModelWeights.load(model.namedParameters(), from: group, file: weightsPath)
    return model
}

/// Reads DiT inputs from HDF5 (root or `inputs/`): x, t, text_states, text_mask?, text_states_2, guidance?.
public func loadDiTInputs(path: String) throws -> DiTInputs {
    let file = try H5File(path: path, mode: .readOnly)
    defer { try? file.close() }
    let g: H5Group = (try file.kind(of: "inputs")) == .group ? try file.group("inputs") : file
    func opt(_ name: String) throws -> Tensor? { try g.exists(name) ? try TensorIO.read(g, name: name) : nil }
    let x = try TensorIO.read(g, name: "x")
    let t = try TensorIO.read(g, name: "t").scalars
    guard x.rank == 5, t.count == x.shape[0] else {
        throw ValidationError("\(path): x must be (B, C, T, H, W) and t (B); got x \(x.shape), t \(t.count) values")
    }
    return DiTInputs(x: x, t: t, text_states: try TensorIO.read(g, name: "text_states"), text_mask: try opt("text_mask"),
                     text_states_2: try TensorIO.read(g, name: "text_states_2"), guidance: try opt("guidance")?.scalars)
}

/// Throws, naming the dataset, unless `inp` has the shapes the DiT of `c` takes.
func checkDiTInputs(_ inp: DiTInputs, _ c: DiTConfig, path: String) throws {
    func fail(_ m: String) throws -> Never { throw ValidationError("\(path): \(m)") }
    let x = inp.x.shape, B = x[0], p = c.patch_size
    if B < 1 || x.contains(where: { $0 < 1 }) { try fail("x has shape \(x); every size must be >= 1") }
    if x[1] != c.in_channels { try fail("x has \(x[1]) channels, the model takes \(c.in_channels)") }
    if x[2] % p[0] != 0 || x[3] % p[1] != 0 || x[4] % p[2] != 0 { try fail("x (B, C, T, H, W) \(x): T, H, W must be multiples of the patch \(p)") }
    let ts = inp.text_states.shape
    if ts.count != 3 || ts[0] != B || ts[1] < 1 || ts[2] != c.text_states_dim {
        try fail("text_states has shape \(ts), expected (\(B), L >= 1, \(c.text_states_dim))")
    }
    if let m = inp.text_mask, m.shape != [B, ts[1]] { try fail("text_mask has shape \(m.shape), expected (\(B), \(ts[1]))") }
    if inp.text_states_2.shape != [B, c.text_states_dim_2] {
        try fail("text_states_2 has shape \(inp.text_states_2.shape), expected (\(B), \(c.text_states_dim_2))")
    }
    if let g = inp.guidance, g.count != B { try fail("guidance has \(g.count) values, expected \(B) (one per sample)") }
}

struct VelocityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "velocity",
        abstract: "Evaluate the DiT's velocity for inputs read from HDF5 and write it as dataset `v`.",
        discussion: """
        --inputs holds datasets x (B,C,T,H,W), t (B; sigma x 1000), text_states (B,L,D), optional text_mask (B,L),
        text_states_2 (B,D2) and, for guidance-distilled models, guidance (B; scale x 1000) — at the root or under inputs/.
        --weights holds one dataset per parameter under its official HunyuanVideo name (root or weights/).
        """)

    @Option(help: "HDF5 weights file (official parameter names).") var weights: String
    @Option(help: "HDF5 inputs file.") var inputs: String
    @Option(help: "Output HDF5 file (dataset v).") var out: String
    @Option(help: "Model config YAML (default: the weights file's model_config attribute).") var modelConfig: String?
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        try runOrExit {
            threads.apply()
            let model = try loadDiT(weightsPath: weights, modelConfigPath: modelConfig)
            let inp = try loadDiTInputs(path: inputs)
            if model.config.guidance_embed && inp.guidance == nil {
                throw ValidationError("\(inputs): the model has a guidance embedder; add a 'guidance' dataset (scale x 1000)")
            }
            try checkDiTInputs(inp, model.config, path: inputs)
            let v = GradMode.withoutGrad { model(inp) }
            let file = try H5File(path: out, mode: .create)
            try TensorIO.write(v, to: file, name: "v", checksum: false)
            try file.close()
            stderrLine("hv: wrote v \(v.shape) to \(out)")
        }
    }
}
