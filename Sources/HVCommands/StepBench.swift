import ArgumentParser
import Foundation
import HVModel
import HVNN
import HVTensor
import HVTrain

/// `hv-bench step`: one training step (forward + backward + AdamW) of a DiT config, and the
/// same step in PyTorch on diffusers' model, side by side, when a venv is given.
struct StepBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step",
        abstract: "Training step time, tokens/s and GFLOP/s for a DiT config (and PyTorch's, with --torch).")

    @Option(help: "Model config YAML.") var config = "configs/models/bench-1k.yaml"
    @Option(help: "Latent T x H x W per sample.") var latent = "4x32x32"
    @Option(help: "Text tokens per sample.") var textTokens = 32
    @Option(help: "Samples per step.") var batch = 1
    @Option(help: "Timed steps (best is reported) after one warm-up.") var repeats = 3
    @Option(help: "Threads (OpenBLAS, attention; PyTorch's torch.set_num_threads).") var threads = 2
    @Option(help: "A Python venv with torch and diffusers, to time the same step in PyTorch.") var torch: String?
    @Flag(help: "Recompute block activations in backward.") var recompute = false

    func run() throws {
        BLAS.threads = threads
        FlashAttention.threads = threads
        let model = try loadModelConfig(path: config)
        let dims = latent.split(separator: "x").compactMap { Int($0) }
        guard dims.count == 3 else { throw ValidationError("--latent must look like 4x32x32") }
        let dit = HunyuanDiT(config: model, seed: 0)
        dit.recomputeBlocks = recompute
        var rng = HVRandom(seed: 1)
        // Random weights everywhere so that no path is trivially zero.
        for p in dit.parameters() { p.assign(Tensor.randn(p.shape, std: 0.02, rng: &rng)) }
        let params = dit.namedParameters()
        let opt = AdamW(lr: 1e-4)
        let B = batch, L = textTokens
        let x = Tensor.randn([B, model.in_channels] + dims, rng: &rng)
        let target = Tensor.randn([B, model.out_channels] + dims, rng: &rng)
        let inputs = DiTInputs(x: x, t: [Float](repeating: 500, count: B), text_states: Tensor.randn([B, L, model.text_states_dim], rng: &rng),
                               text_mask: Tensor(repeating: 1, shape: [B, L]), text_states_2: Tensor.randn([B, model.text_states_dim_2], rng: &rng))
        func step() {
            dit(inputs).mseLoss(target).backward()
            GradMode.withoutGrad { opt.update(params) }
            for (_, p) in params { p.zeroGrad() }
        }
        let t = bestTime(repeats: repeats, step)
        let tokens = model.videoTokens(latentT: dims[0], latentH: dims[1], latentW: dims[2])
        let flops = Double(B) * model.trainingFLOPs(videoTokens: tokens, textTokens: L)
        print("config \(config): \(model.parameterCount.formatted()) parameters, \(B) x (\(tokens) video + \(L) text) tokens, threads \(threads), OpenBLAS \(BLAS.coreName)")
        print(String(format: "hv       step %.3f s   %8.0f video tokens/s   %6.1f GFLOP/s", t, Double(B * tokens) / t, flops / t / 1e9))
        guard let torch else { return }
        let py = (torch as NSString).appendingPathComponent("bin/python")
        let script = "scripts/dev/torch_step_bench.py"
        let rope = model.rope_dim_list.map(String.init).joined(separator: ",")
        let args = [script, "--hidden", "\(model.hidden_size)", "--heads", "\(model.heads_num)", "--double", "\(model.mm_double_blocks_depth)",
                    "--single", "\(model.mm_single_blocks_depth)", "--refiner", "\(model.refiner_depth)", "--rope", rope,
                    "--text-dim", "\(model.text_states_dim)", "--pooled-dim", "\(model.text_states_dim_2)", "--latent", latent,
                    "--text-tokens", "\(L)", "--batch", "\(B)", "--threads", "\(threads)", "--repeats", "\(repeats)"]
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
        print(String(format: "pytorch  step %.3f s   %8.0f video tokens/s   %6.1f GFLOP/s   (torch %@, diffusers %@, %@ params)",
                     pt, Double(B * tokens) / pt, flops / pt / 1e9, "\(obj["torch"] ?? "?")" as NSString,
                     "\(obj["diffusers"] ?? "?")" as NSString, "\(obj["params"] ?? "?")" as NSString))
        print(String(format: "ratio    hv / pytorch step time = %.2f  (target <= 0.80)", t / pt))
    }
}
