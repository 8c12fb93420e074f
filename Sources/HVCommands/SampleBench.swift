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

    func run() throws {
        BLAS.threads = threads
        FlashAttention.threads = threads
        FlashAttention.fused = !blockedAttention
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
        var hv: [MatmulPrecision: Double] = [:], pt: [MatmulPrecision: Double] = [:], pairs: [MatmulPrecision: Double] = [:]
        let side = torch.map { TorchBench(venv: $0, model: model, latent: latent, textTokens: L, batch: 1, threads: threads) }
        if side != nil { print("hv and PyTorch steps alternate: \(max(repeats, 1)) pairs after two warm-up steps of each") }
        for p in precision.list {
            try MatmulPrecision.select(p)
            guard let side else {
                let t = timings(repeats: repeats, step)
                hv[p] = t.best
                print(String(format: "hv %@       sampling step %.4f s   (median %.4f s)", p.rawValue, t.best, t.median))
                continue
            }
            let session = try side.session(mode: "sample", bf16: p == .bf16)
            defer { session.close() }
            let r = try alternate(repeats: repeats, hv: step, torch: session)
            let (h, t) = (bestAndMedian(r.hv), bestAndMedian(r.torch))
            (hv[p], pt[p]) = (h.best, t.best)
            pairs[p] = bestAndMedian(zip(r.hv, r.torch).map { $0 / $1 }).median
            print(String(format: "hv %@       sampling step %.4f s   (median %.4f s)", p.rawValue, h.best, h.median))
            print(String(format: "pytorch %@  sampling step %.4f s   (median %.4f s; %@%@)", p.rawValue, t.best, t.median, session.versions,
                         p == .bf16 ? ", autocast bfloat16" : ""))
        }
        try MatmulPrecision.select(.fp32)
        guard side != nil else { return }
        for p in precision.list {
            print(String(format: "ratio    hv %@ / pytorch %@ sampling step time = %.2f  (target <= 0.80; median of the %d pairs' ratios %.2f)",
                         p.rawValue, p.rawValue, hv[p]! / pt[p]!, max(repeats, 1), pairs[p]!))
        }
        if let h = hv[.bf16], let f = pt[.fp32] {
            print(String(format: "ratio    hv bf16 / pytorch fp32 sampling step time = %.2f", h / f))
        }
    }
}
