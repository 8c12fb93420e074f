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
    @Option(help: "Timed steps (best and median are reported) after one warm-up; with --torch, pairs of one hv step and one PyTorch step, alternating, after two warm-up steps of each.") var repeats = 5
    @Option(help: "Threads (OpenBLAS, attention; PyTorch's torch.set_num_threads).") var threads = 2
    @Option(help: "A Python venv with torch and diffusers, to time the same step in PyTorch, alternating with hv's.") var torch: String?
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
        let tokens = model.videoTokens(latentT: dims[0], latentH: dims[1], latentW: dims[2])
        print("config \(config): \(model.parameterCount.formatted()) parameters, \(tokens) video + \(L) text tokens, threads \(threads), OpenBLAS \(BLAS.coreName)")
        let side = torch.map { TorchBench(venv: $0, model: model, latent: latent, textTokens: L, batch: 1, threads: threads) }
        let r = try SideBySide(precision.list, repeats: repeats, side: side, mode: "sample", step: step,
                               printHV: { p, best, median in
                                   print(String(format: "hv %@       sampling step %.4f s   (median %.4f s)", p.rawValue, best, median))
                               },
                               printTorch: { p, best, median, versions in
                                   print(String(format: "pytorch %@  sampling step %.4f s   (median %.4f s; %@%@)", p.rawValue, best, median, versions,
                                                p == .bf16 ? ", autocast bfloat16" : ""))
                               })
        r.printRatios("sampling step time", repeats: repeats)
        BLAS.shapeLog?.report().forEach { print($0) }
    }
}
