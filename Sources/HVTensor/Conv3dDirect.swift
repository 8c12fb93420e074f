import CHVKernels

/// Narrow stride-1 convolutions (the causal VAE's full-resolution layers have 16-64 channels)
/// skip im2col: the C kernels accumulate output rows in registers straight from the padded
/// input, which at 16 channels is several times faster than copying 27 shifted copies of the
/// input for a GEMM that reuses each element only 16 times.
public enum Conv3dDirect {
    /// Layers whose input and output channels are both at most this run the direct kernels
    /// (0: never; tests set it to compare the two paths).
    nonisolated(unsafe) public static var maxChannels = 64

    /// Which register tiles the direct kernels use: -1 (default) lets the CPU decide (AVX2 tiles
    /// on CPUs with AVX2 + FMA but no AVX-512F, 16-float vector tiles otherwise), 0 always the
    /// 16-float tiles, 1 the AVX2 tiles whenever the CPU has AVX2 + FMA (tests compare the two).
    public static func setAVX2Tiles(_ mode: Int) { hv_conv3d_set_avx2_mode(Int32(mode)) }
    /// Whether the direct kernels currently run the AVX2 tiles.
    public static var avx2TilesActive: Bool { hv_conv3d_avx2_active() != 0 }

    /// Stride 1, spatial kernel 3 x 3 or 1 x 1 (any temporal size), narrow enough.
    static func applies(inChannels: Int, outChannels: Int, kernel: (h: Int, w: Int), stride: (t: Int, h: Int, w: Int)) -> Bool {
        stride == (1, 1, 1) && (kernel == (3, 3) || kernel == (1, 1)) && max(inChannels, outChannels) <= maxChannels
    }

    /// Input dimensions of one padded sample and the kernel size.
    struct Geometry {
        var ci: Int, tp: Int, hp: Int, wp: Int, co: Int, kt: Int, kh: Int, kw: Int
        var outRows: Int { (tp - kt + 1) * (hp - kh + 1) }
        var outSize: Int { outRows * (wp - kw + 1) }
        var inSize: Int { ci * tp * hp * wp }
    }

    /// w [Co, Ci, kt, kh, kw] as [Ci * kt * kh * kw, Co rounded up to 16], zero-padded; with
    /// `flipped`, the weight of the transposed convolution (input-gradient): [Co * kt * kh * kw,
    /// Ci rounded up] with the kernel reversed in every axis.
    static func packedWeight(_ w: Tensor, flipped: Bool) -> Tensor {
        let co = w.shape[0], ci = w.shape[1], kt = w.shape[2], kh = w.shape[3], kw = w.shape[4]
        let taps = kt * kh * kw
        let (rows, cols) = flipped ? (co, ci) : (ci, co)
        let colsP = (cols + 15) / 16 * 16
        let packed = Tensor(zeros: [rows * taps, colsP])
        let src = w.contiguous().pointer, dst = packed.pointer
        for o in 0..<co {
            for i in 0..<ci {
                for tap in 0..<taps {
                    let v = src[(o * ci + i) * taps + tap]
                    if flipped { dst[(o * taps + taps - 1 - tap) * colsP + i] = v } else { dst[(i * taps + tap) * colsP + o] = v }
                }
            }
        }
        return packed
    }

    /// out [Co, To, Ho, Wo] = x [Ci, Tp, Hp, Wp] (*) weight, rows split over the threads.
    static func forward(_ x: UnsafePointer<Float>, _ g: Geometry, packed: Tensor, out: UnsafeMutablePointer<Float>, threads: Int) {
        let rows = g.outRows
        let parts = max(1, min(threads, rows))
        let xs = UnsafeSendable(x), os = UnsafeSendable(UnsafePointer(out))
        parallelFor(parts, threads: threads) { part in
            let r0 = rows * part / parts, r1 = rows * (part + 1) / parts
            hv_conv3d_direct(xs.pointer, Int32(g.ci), Int32(g.tp), Int32(g.hp), Int32(g.wp), packed.pointer,
                             Int32(g.co), Int32(g.kt), Int32(g.kh), Int32(g.kw), UnsafeMutablePointer(mutating: os.pointer),
                             Int32(r0), Int32(r1))
        }
    }

    /// dx [Ci, Tp, Hp, Wp] = the transposed convolution of grad [Co, To, Ho, Wo] (overwritten).
    static func inputGrad(_ grad: UnsafePointer<Float>, _ g: Geometry, flippedPacked: Tensor, dx: UnsafeMutablePointer<Float>, threads: Int) {
        let to = g.tp - g.kt + 1, ho = g.hp - g.kh + 1, wo = g.wp - g.kw + 1
        // grad zero-padded by kernel - 1 on both sides of every axis: [Co, Tp + kt - 1, ...].
        let gt = to + 2 * (g.kt - 1), gh = ho + 2 * (g.kh - 1), gw = wo + 2 * (g.kw - 1)
        let padded = Tensor(zeros: [g.co, gt, gh, gw])
        let p = padded.pointer
        for c in 0..<g.co {
            for t in 0..<to {
                for h in 0..<ho {
                    (p + ((c * gt + t + g.kt - 1) * gh + h + g.kh - 1) * gw + g.kw - 1)
                        .update(from: grad + ((c * to + t) * ho + h) * wo, count: wo)
                }
            }
        }
        let transposed = Geometry(ci: g.co, tp: gt, hp: gh, wp: gw, co: g.ci, kt: g.kt, kh: g.kh, kw: g.kw)
        forward(p, transposed, packed: flippedPacked, out: dx, threads: threads)
    }

    /// dw [Co, Ci, kt, kh, kw] += grad [Co, To, Ho, Wo] (*) x [Ci, Tp, Hp, Wp]; input channels
    /// split over the threads (each owns its slice of dw). The kernel reads the gradient
    /// transposed, [To * Ho * Wo, Co rounded up to 32].
    static func weightGrad(_ x: UnsafePointer<Float>, _ grad: UnsafePointer<Float>, _ g: Geometry, dw: UnsafeMutablePointer<Float>, threads: Int) {
        let positions = g.outSize, coP = (g.co + 31) / 32 * 32
        let transposed = Tensor(zeros: [positions, coP])
        let t = transposed.pointer
        for c in 0..<g.co {
            let src = grad + c * positions
            for p in 0..<positions { t[p * coP + c] = src[p] }
        }
        let parts = max(1, min(threads, g.ci))
        let xs = UnsafeSendable(x), ds = UnsafeSendable(UnsafePointer(dw))
        parallelFor(parts, threads: threads) { part in
            let c0 = g.ci * part / parts, c1 = g.ci * (part + 1) / parts
            hv_conv3d_direct_wgrad(xs.pointer, Int32(g.ci), Int32(g.tp), Int32(g.hp), Int32(g.wp), transposed.pointer,
                                   Int32(g.co), Int32(g.kt), Int32(g.kh), Int32(g.kw), UnsafeMutablePointer(mutating: ds.pointer),
                                   Int32(c0), Int32(c1))
        }
    }
}

/// A raw pointer handed to worker threads that write disjoint parts of its memory.
struct UnsafeSendable: @unchecked Sendable {
    let pointer: UnsafePointer<Float>
    init(_ pointer: UnsafePointer<Float>) { self.pointer = pointer }
}
