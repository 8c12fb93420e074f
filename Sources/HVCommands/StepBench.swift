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
    @Option(help: "Timed steps (best and median are reported) after one warm-up; with --torch, pairs of one hv step and one PyTorch step, alternating, after two warm-up steps of each.") var repeats = 3
    @Option(help: "Threads (OpenBLAS, attention; PyTorch's torch.set_num_threads).") var threads = 2
    @Option(help: "A Python venv with torch and diffusers, to time the same step in PyTorch, alternating with hv's.") var torch: String?
    @Flag(help: "Recompute block activations in backward.") var recompute = false
    @Option(help: "Matmul precision: fp32, bf16 (bf16 operands, fp32 sums; PyTorch side under torch.autocast bfloat16) or both.")
    var precision = BenchPrecision.fp32
    @Flag(help: "Attention over blocked sgemm calls instead of the fused kernel (for A/B timings).") var blockedAttention = false
    @Flag(help: "Print the wall time of hv's fp32 GEMM calls per shape (all steps, warm-ups included).") var gemmShapes = false

    func run() throws {
        BLAS.threads = threads
        FlashAttention.threads = threads
        FlashAttention.fused = !blockedAttention
        BLAS.shapeLog = gemmShapes ? GemmShapeLog() : nil
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
        let tokens = model.videoTokens(latentT: dims[0], latentH: dims[1], latentW: dims[2])
        let flops = Double(B) * model.trainingFLOPs(videoTokens: tokens, textTokens: L)
        print("config \(config): \(model.parameterCount.formatted()) parameters, \(B) x (\(tokens) video + \(L) text) tokens, threads \(threads), OpenBLAS \(BLAS.coreName)")
        func line(_ who: String, _ s: Double, _ extra: String = "") -> String {
            String(format: "%@ step %.3f s   %8.0f video tokens/s   %6.1f GFLOP/s%@", who as NSString, s, Double(B * tokens) / s, flops / s / 1e9, extra as NSString)
        }
        let side = torch.map { TorchBench(venv: $0, model: model, latent: latent, textTokens: L, batch: B, threads: threads) }
        let r = try SideBySide(precision.list, repeats: repeats, side: side, mode: "train", step: step,
                               printHV: { p, best, median in print(line("hv \(p.rawValue)      ", best, String(format: "   (median %.3f s)", median))) },
                               printTorch: { p, best, median, versions in
                                   print(line(p == .bf16 ? "pytorch bf16 " : "pytorch fp32 ", best,
                                              String(format: "   (median %.3f s; %@%@)", median, versions, p == .bf16 ? ", autocast bfloat16" : "")))
                               })
        r.printRatios("step time", repeats: repeats)
        BLAS.shapeLog?.report().forEach { print($0) }
    }
}
