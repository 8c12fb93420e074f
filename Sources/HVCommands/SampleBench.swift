import ArgumentParser
import Foundation
import HVModel
import HVNN
import HVTensor
import HVTrain

/// `hv-bench sample`: seconds per sampling step (one no-grad DiT forward + the Euler update,
/// batch 1, no CFG) of a DiT config, and the same step in PyTorch on diffusers' model with
/// --torch, measured in the same run.
struct SampleBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample",
        abstract: "Sampling step time of a DiT config (and PyTorch + diffusers', with --torch).")

    @Option(help: "Model config YAML.") var config = "configs/models/bench-1k.yaml"
    @Option(help: "Latent T x H x W.") var latent = "4x32x32"
    @Option(help: "Text tokens.") var textTokens = 32
    @Option(help: "Timed steps (best is reported) after one warm-up.") var repeats = 5
    @Option(help: "Threads (OpenBLAS, attention; PyTorch's torch.set_num_threads).") var threads = 2
    @Option(help: "A Python venv with torch and diffusers, to time the same step in PyTorch.") var torch: String?

    func run() throws {
        BLAS.threads = threads
        FlashAttention.threads = threads
        let model = try loadModelConfig(path: config)
        let dims = latent.split(separator: "x").compactMap { Int($0) }
        guard dims.count == 3 else { throw ValidationError("--latent must look like 4x32x32") }
        let dit = HunyuanDiT(config: model, seed: 0)
        var rng = HVRandom(seed: 1)
        for p in dit.parameters() { p.assign(Tensor.randn(p.shape, std: 0.02, rng: &rng)) }
        let L = textTokens
        var x = Tensor.randn([1, model.in_channels] + dims, rng: &rng)
        let text = Tensor.randn([1, L, model.text_states_dim], rng: &rng), mask = Tensor(repeating: 1, shape: [1, L])
        let pooled = Tensor.randn([1, model.text_states_dim_2], rng: &rng)
        let g: [Float]? = model.guidance_embed ? [6000] : nil
        func step() {
            GradMode.withoutGrad {
                let v = dit(DiTInputs(x: x, t: [500], text_states: text, text_mask: mask, text_states_2: pooled, guidance: g))
                x = x - v * 0.02
            }
        }
        let t = bestTime(repeats: repeats, step)
        let tokens = model.videoTokens(latentT: dims[0], latentH: dims[1], latentW: dims[2])
        print("config \(config): \(model.parameterCount.formatted()) parameters, \(tokens) video + \(L) text tokens, threads \(threads), OpenBLAS \(BLAS.coreName)")
        print(String(format: "hv       sampling step %.4f s", t))
        guard let torch else { return }
        let py = (torch as NSString).appendingPathComponent("bin/python")
        let rope = model.rope_dim_list.map(String.init).joined(separator: ",")
        let args = ["scripts/dev/torch_step_bench.py", "--mode", "sample", "--hidden", "\(model.hidden_size)", "--heads", "\(model.heads_num)",
                    "--double", "\(model.mm_double_blocks_depth)", "--single", "\(model.mm_single_blocks_depth)", "--refiner", "\(model.refiner_depth)",
                    "--rope", rope, "--text-dim", "\(model.text_states_dim)", "--pooled-dim", "\(model.text_states_dim_2)", "--latent", latent,
                    "--text-tokens", "\(L)", "--threads", "\(threads)", "--repeats", "\(repeats)"]
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: py)
        proc.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["OMP_NUM_THREADS"] = "\(threads)"
        proc.environment = env
        let pipe = Pipe()
        proc.standardOutput = pipe
        try proc.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        guard proc.terminationStatus == 0,
              let line = String(data: data, encoding: .utf8)?.split(separator: "\n").last,
              let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let pt = obj["step_seconds"] as? Double else {
            throw ValidationError("the PyTorch side failed (exit \(proc.terminationStatus)); run \(py) \(args.joined(separator: " ")) to see why")
        }
        print(String(format: "pytorch  sampling step %.4f s   (torch %@, diffusers %@, %@ params)", pt, "\(obj["torch"] ?? "?")" as NSString,
                     "\(obj["diffusers"] ?? "?")" as NSString, "\(obj["params"] ?? "?")" as NSString))
        print(String(format: "ratio    hv / pytorch sampling step time = %.2f  (target <= 0.80)", t / pt))
    }
}
