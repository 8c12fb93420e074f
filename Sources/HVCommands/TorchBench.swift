import ArgumentParser
import Foundation
import HVModel
import HVTensor

/// The PyTorch side of `hv-bench step` and `hv-bench sample`: diffusers'
/// HunyuanVideoTransformer3DModel of the same config, timed by scripts/dev/torch_step_bench.py
/// in the given venv, with the same threads and repeats.
struct TorchBench {
    let venv: String
    let model: DiTConfig
    let latent: String
    let textTokens: Int
    let batch: Int
    let threads: Int
    let repeats: Int

    struct Result {
        let seconds: Double
        let versions: String
    }

    /// Best step time in seconds; `mode` is "train" or "sample"; bf16 runs the forward under
    /// torch.autocast(bfloat16).
    func run(mode: String, bf16: Bool) throws -> Result {
        let py = (venv as NSString).appendingPathComponent("bin/python")
        let rope = model.rope_dim_list.map(String.init).joined(separator: ",")
        var args = ["scripts/dev/torch_step_bench.py", "--mode", mode, "--hidden", "\(model.hidden_size)", "--heads", "\(model.heads_num)",
                    "--double", "\(model.mm_double_blocks_depth)", "--single", "\(model.mm_single_blocks_depth)",
                    "--refiner", "\(model.refiner_depth)", "--rope", rope, "--text-dim", "\(model.text_states_dim)",
                    "--pooled-dim", "\(model.text_states_dim_2)", "--latent", latent, "--text-tokens", "\(textTokens)",
                    "--batch", "\(batch)", "--threads", "\(threads)", "--repeats", "\(repeats)"]
        if bf16 { args.append("--bf16") }
        let obj = try runPythonJSON(venv: venv, args: args, threads: threads, side: "PyTorch")
        guard let seconds = obj["step_seconds"] as? Double else {
            throw ValidationError("the PyTorch side printed no step_seconds; run \(py) \(args.joined(separator: " ")) to see why")
        }
        return Result(seconds: seconds, versions: "torch \(obj["torch"] ?? "?"), diffusers \(obj["diffusers"] ?? "?"), \(obj["params"] ?? "?") params")
    }
}

/// Runs a dev script with the venv's python (OMP_NUM_THREADS = threads) and returns the JSON
/// object on the last line of its output; `side` names it in errors.
func runPythonJSON(venv: String, args: [String], threads: Int, env: [String: String] = ProcessInfo.processInfo.environment,
                   side: String) throws -> [String: Any] {
    let py = (venv as NSString).appendingPathComponent("bin/python")
    let proc = Process()
    proc.executableURL = URL(fileURLWithPath: py)
    proc.arguments = args
    var env = env
    env["OMP_NUM_THREADS"] = "\(threads)"
    proc.environment = env
    let pipe = Pipe()
    proc.standardOutput = pipe
    try proc.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    proc.waitUntilExit()
    guard proc.terminationStatus == 0,
          let line = String(data: data, encoding: .utf8)?.split(separator: "\n").last,
          let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
        throw ValidationError("the \(side) side failed (exit \(proc.terminationStatus)); run \(py) \(args.joined(separator: " ")) to see why")
    }
    return obj
}

/// `--precision fp32|bf16|both` of the step and sample benchmarks.
enum BenchPrecision: String, ExpressibleByArgument, CaseIterable {
    case fp32, bf16, both
    var list: [MatmulPrecision] {
        switch self {
        case .fp32: [.fp32]
        case .bf16: [.bf16]
        case .both: [.fp32, .bf16]
        }
    }
}
