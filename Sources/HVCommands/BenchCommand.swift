import ArgumentParser
import Foundation
import HVTensor

/// `hv-bench`: performance figures printed side by side with their references (release builds).
public struct BenchCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-bench",
        abstract: "Measure hv's kernels and training step (build with -c release).",
        subcommands: [KernelsBench.self, StepBench.self, SampleBench.self, AllReduceBench.self, AllReduceRank.self, CheckpointBench.self,
                      CheckpointShardRead.self, MemoryBench.self, RingAttentionBench.self, RingAttentionRank.self, VAEDecodeBench.self],
        defaultSubcommand: KernelsBench.self)
    public init() {}
}

/// Wall-clock seconds of the best of `repeats` runs after one warm-up.
func bestTime(repeats: Int, _ body: () -> Void) -> Double { timings(repeats: repeats, body).best }

/// Best and median seconds of `repeats` timed runs of `body` after one untimed warm-up.
func timings(repeats: Int, _ body: () -> Void) -> (best: Double, median: Double) {
    body()
    var times: [Double] = []
    for _ in 0..<max(repeats, 1) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    if ProcessInfo.processInfo.environment["HV_BENCH_TIMES"] == "1" {
        FileHandle.standardError.write(Data(("times: " + times.map { String(format: "%.4f", $0) }.joined(separator: " ") + "\n").utf8))
    }
    return bestAndMedian(times)
}

struct KernelsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "sgemm vs hv matmul/linear at DiT shapes, blocked attention and Conv3d throughput.")

    @Option(help: "Tokens (rows) for the linear-layer shapes.") var tokens = 1024
    @Option(help: "Sequence length for attention.") var seq = 4096
    @Option(help: "Head dimension for attention.") var headDim = 128
    @Option(help: "Timed repetitions per measurement (best is reported).") var repeats = 3
    @Option(help: "OpenBLAS threads (default: all cores).") var threads: Int?
    @Option(help: "Attention (and elementwise) worker threads (default: --threads, else all cores).") var attentionThreads: Int?
    @Option(help: "Attention query/key block size.") var block: Int?
    @Flag(help: "Only the attention benchmark.") var attentionOnly = false
    @Flag(help: "Only the Conv3d benchmark (direct kernels vs im2col + sgemm).") var convOnly = false

    func run() throws {
        if let threads { BLAS.threads = threads; Parallel.threads = threads }
        if let attentionThreads { FlashAttention.threads = attentionThreads }  // also elementwise work (Parallel.threads)
        if let block { FlashAttention.blockQ = block; FlashAttention.blockK = block }
        print("OpenBLAS \(BLAS.config) | kernel \(BLAS.coreName) | threads \(BLAS.threads) | OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)")")
        var rng = HVRandom(seed: 1)

        // Peak reference: square sgemm.
        let n = 2048
        let a = Tensor.randn([n, n], rng: &rng), b = Tensor.randn([n, n], rng: &rng), c = Tensor(zeros: [n, n])
        let tPeak = bestTime(repeats: repeats) {
            BLAS.sgemm(m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
        }
        let peak = 2 * Double(n * n * n) / tPeak / 1e9
        print(String(format: "sgemm 2048^3 (peak reference)             %8.1f GFLOP/s", peak))

        if attentionOnly { benchAttention(peak: peak, rng: &rng); return }
        if convOnly { benchConv3d(rng: &rng); return }
        // DiT shapes (HYVideo-T/2 hidden 3072, and a family member with hidden 1024): M tokens x K -> N.
        print("\nlinear layers, \(tokens) tokens          raw sgemm   hv linear   ratio   hv fwd+bwd")
        let shapes: [(String, Int, Int)] = [
            ("img_attn_qkv  3072->9216", 3072, 9216), ("img_mlp.fc1   3072->12288", 3072, 12288),
            ("img_mlp.fc2  12288->3072", 12288, 3072), ("linear1 (1024) 1024->7168", 1024, 7168),
        ]
        for (label, k, nOut) in shapes {
            let x = Tensor.randn([tokens, k], std: 0.1, rng: &rng), w = Tensor.randn([nOut, k], std: 0.02, rng: &rng)
            let out = Tensor(zeros: [tokens, nOut])
            let flops = 2 * Double(tokens * k * nOut)
            let tRaw = bestTime(repeats: repeats) {
                BLAS.sgemm(transB: true, m: tokens, n: nOut, k: k, a: x.pointer, lda: k, b: w.pointer, ldb: k, c: out.pointer, ldc: nOut)
            }
            let tHv = bestTime(repeats: repeats) { _ = GradMode.withoutGrad { x.linear(w) } }
            x.requiresGrad = true; w.requiresGrad = true
            let g = Tensor(repeating: 1e-3, shape: [tokens, nOut])
            let tTrain = bestTime(repeats: repeats) {
                let y = x.linear(w)
                y.backward(g)
                x.zeroGrad(); w.zeroGrad()
            }
            print(String(format: "  %@   %8.1f    %8.1f    %.2f    %8.1f GFLOP/s",
                         label as NSString, flops / tRaw / 1e9, flops / tHv / 1e9, tRaw / tHv, 3 * flops / tTrain / 1e9))
        }

        // Batched matmul (attention-like shapes).
        do {
            let B = 8, M = 512, K = 128, N = 512
            let p = Tensor.randn([B, M, K], rng: &rng), q = Tensor.randn([B, K, N], rng: &rng)
            let out = Tensor(zeros: [B, M, N])
            let flops = 2 * Double(B * M * K * N)
            let tRaw = bestTime(repeats: repeats) {
                for i in 0..<B {
                    BLAS.sgemm(m: M, n: N, k: K, a: p.pointer + i * M * K, lda: K, b: q.pointer + i * K * N, ldb: N,
                               c: out.pointer + i * M * N, ldc: N)
                }
            }
            let tHv = bestTime(repeats: repeats) { _ = GradMode.withoutGrad { p.matmul(q) } }
            print(String(format: "  bmm 8x(512x128x512)          %8.1f    %8.1f    %.2f", flops / tRaw / 1e9, flops / tHv / 1e9, tRaw / tHv))
        }

        benchAttention(peak: peak, rng: &rng)
        benchConv3d(rng: &rng)
    }

    /// Attention forward + backward: 4 S^2 D forward, 10 S^2 D backward (recompute QK^T, dV, dP, dQ, dK).
    func benchAttention(peak: Double, rng: inout HVRandom) {
        do {
            let S = seq, D = headDim, H = 2
            let q = Tensor.randn([1, H, S, D], std: 0.5, rng: &rng), k = Tensor.randn([1, H, S, D], std: 0.5, rng: &rng)
            let v = Tensor.randn([1, H, S, D], rng: &rng)
            let tFwd = bestTime(repeats: repeats) { _ = GradMode.withoutGrad { Tensor.scaledDotProductAttention(q, k, v) } }
            for t in [q, k, v] { t.requiresGrad = true }
            let g = Tensor.randn([1, H, S, D], rng: &rng)
            let tBoth = bestTime(repeats: repeats) {
                Tensor.scaledDotProductAttention(q, k, v).backward(g)
                for t in [q, k, v] { t.zeroGrad() }
            }
            let fwdFlops = 4 * Double(S * S * D * H), totalFlops = 14 * Double(S * S * D * H)
            let gf = totalFlops / tBoth / 1e9
            print(String(format: "\nattention S=%d D=%d heads=%d (blocks %dx%d)", S, D, H, FlashAttention.blockQ, FlashAttention.blockK))
            print(String(format: "  forward            %8.1f GFLOP/s  (%.3f s)", fwdFlops / tFwd / 1e9, tFwd))
            print(String(format: "  forward+backward   %8.1f GFLOP/s  (%.3f s)  ratio to sgemm peak %.2f", gf, tBoth, gf / peak))
        }

    }

    /// Causal 3x3x3 convolutions on 9 x 32 x 32 (the small VAE's full-resolution layers and a
    /// wide one); narrow ones also through im2col + sgemm, side by side with the direct kernels,
    /// and on AVX2-only CPUs with the direct kernels' 16-float tiles as well.
    func benchConv3d(rng: inout HVRandom) {
        print("\nconv3d k3 on 9x32x32 (causal, replicate), GFLOP/s: forward / forward+backward")
        let saved = Conv3dDirect.maxChannels
        defer { Conv3dDirect.maxChannels = saved }
        for channels in [16, 32, 64, 128] {
            let x = Tensor.randn([1, channels, 9, 32, 32], rng: &rng), w = Tensor.randn([channels, channels, 3, 3, 3], std: 0.02, rng: &rng)
            let g = Tensor.randn([1, channels, 9, 32, 32], rng: &rng)
            let flops = 2 * Double(channels * channels * 27) * Double(9 * 32 * 32)
            func measure() -> (forward: Double, both: Double) {
                x.requiresGrad = false; w.requiresGrad = false
                let tFwd = bestTime(repeats: repeats) { _ = GradMode.withoutGrad { x.conv3d(w, padding: .causal(kernel: (3, 3, 3))) } }
                x.requiresGrad = true; w.requiresGrad = true
                let tBoth = bestTime(repeats: repeats) {
                    x.conv3d(w, padding: .causal(kernel: (3, 3, 3))).backward(g)
                    x.zeroGrad(); w.zeroGrad()
                }
                return (flops / tFwd / 1e9, 3 * flops / tBoth / 1e9)
            }
            let direct = channels <= saved
            let main = measure()
            var line = String(format: "  %3d -> %3d  %-7@ %7.1f / %7.1f", channels, channels, (direct ? "direct" : "im2col") as NSString, main.forward, main.both)
            if direct {
                Conv3dDirect.maxChannels = 0
                let im2col = measure()
                Conv3dDirect.maxChannels = saved
                line += String(format: "   im2col %7.1f / %7.1f   speed-up %.2fx / %.2fx", im2col.forward, im2col.both,
                               main.forward / im2col.forward, main.both / im2col.both)
            }
            if direct && Conv3dDirect.avx2TilesActive {
                // The same direct kernels with the 16-float tiles (they spill on AVX2).
                Conv3dDirect.setAVX2Tiles(0)
                let wide = measure()
                Conv3dDirect.setAVX2Tiles(-1)
                line += String(format: "   16-float tiles %7.1f / %7.1f", wide.forward, wide.both)
            }
            print(line)
        }
    }
}
