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

    func run() throws {
        BLAS.threads = threads
        FlashAttention.threads = threads
        FlashAttention.fused = !blockedAttention
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
        var hv: [MatmulPrecision: Double] = [:], pt: [MatmulPrecision: Double] = [:], pairs: [MatmulPrecision: Double] = [:]
        let side = torch.map { TorchBench(venv: $0, model: model, latent: latent, textTokens: L, batch: B, threads: threads) }
        if side != nil { print("hv and PyTorch steps alternate: \(max(repeats, 1)) pairs after two warm-up steps of each") }
        for p in precision.list {
            try MatmulPrecision.select(p)
            guard let side else {
                let t = timings(repeats: repeats, step)
                hv[p] = t.best
                print(line("hv \(p.rawValue)      ", t.best, String(format: "   (median %.3f s)", t.median)))
                continue
            }
            let session = try side.session(mode: "train", bf16: p == .bf16)
            defer { session.close() }
            let r = try alternate(repeats: repeats, hv: step, torch: session)
            let (h, t) = (bestAndMedian(r.hv), bestAndMedian(r.torch))
            (hv[p], pt[p]) = (h.best, t.best)
            pairs[p] = bestAndMedian(zip(r.hv, r.torch).map { $0 / $1 }).median
            print(line("hv \(p.rawValue)      ", h.best, String(format: "   (median %.3f s)", h.median)))
            print(line(p == .bf16 ? "pytorch bf16 " : "pytorch fp32 ", t.best,
                       String(format: "   (median %.3f s; %@%@)", t.median, session.versions, p == .bf16 ? ", autocast bfloat16" : "")))
        }
        try MatmulPrecision.select(.fp32)
        guard side != nil else { return }
        for p in precision.list {
            print(String(format: "ratio    hv %@ / pytorch %@ step time = %.2f  (target <= 0.80; median of the %d pairs' ratios %.2f)",
                         p.rawValue, p.rawValue, hv[p]! / pt[p]!, max(repeats, 1), pairs[p]!))
        }
        if let h = hv[.bf16], let f = pt[.fp32] {
            print(String(format: "ratio    hv bf16 / pytorch fp32 step time = %.2f", h / f))
        }
    }
}
