import CHVKernels
import Foundation

/// HunyuanVideo's 3D rotary position embedding (official `get_nd_rotary_pos_embed` with
/// `use_real=True`): head-dim channels are split per axis (t, h, w) = rope_dim_list; each axis
/// uses frequencies 1/theta^(2k/d_i) on its integer grid position; cos/sin are repeated so
/// that adjacent channels (2i, 2i+1) form one rotation pair.
public enum RoPE3D {
    /// cos and sin tables [T*H*W, sum(dims)] for a (t, h, w) token grid in row-major order.
    public static func frequencies(grid: (t: Int, h: Int, w: Int), dims: [Int], theta: Double = 256) -> (cos: Tensor, sin: Tensor) {
        precondition(dims.count == 3 && dims.allSatisfy { $0 % 2 == 0 }, "RoPE dims must be three even numbers, got \(dims)")
        let D = dims.reduce(0, +)
        let S = grid.t * grid.h * grid.w
        let cosT = Tensor(uninitialized: [S, D]), sinT = Tensor(uninitialized: [S, D])
        let freqs: [[Double]] = dims.map { d in (0..<(d / 2)).map { k in 1 / Foundation.pow(theta, Double(2 * k) / Double(d)) } }
        var token = 0
        for t in 0..<grid.t {
            for h in 0..<grid.h {
                for w in 0..<grid.w {
                    let pos = [Double(t), Double(h), Double(w)]
                    var ch = 0
                    for axis in 0..<3 {
                        for f in freqs[axis] {
                            let angle = pos[axis] * f
                            let c = Float(Foundation.cos(angle)), s = Float(Foundation.sin(angle))
                            cosT.pointer[token * D + ch] = c; cosT.pointer[token * D + ch + 1] = c
                            sinT.pointer[token * D + ch] = s; sinT.pointer[token * D + ch + 1] = s
                            ch += 2
                        }
                    }
                    token += 1
                }
            }
        }
        return (cosT, sinT)
    }
}

extension Tensor {
    /// Rotates adjacent channel pairs of x [B, S, heads, D] by per-token angles:
    /// out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i+1] cos + x[2i] sin; cos/sin [S, D].
    /// With cos/sin [N, D] for N < S, only the first N tokens are rotated and the others copied
    /// (the video tokens of [video ; text], in one pass instead of slice, rotate and concat).
    public func applyRotary(cos: Tensor, sin: Tensor) -> Tensor {
        precondition(rank == 4, "applyRotary expects [B, S, heads, D], got \(shape)")
        let B = shape[0], S = shape[1], Hh = shape[2], D = shape[3], N = cos.shape[0]
        precondition(cos.shape == [N, D] && sin.shape == [N, D] && N <= S, "applyRotary: tables \(cos.shape) for x \(shape)")
        let x = contiguous(), c = cos.contiguous(), s = sin.contiguous()
        let out = Tensor(uninitialized: shape)
        Tensor.rotate(x.pointer, out.pointer, c.pointer, s.pointer, B: B, S: S, rotated: N, Hh: Hh, D: D, inverse: false)
        return Tensor.record("rotary", out, [self]) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: gc.shape)
            Tensor.rotate(gc.pointer, dx.pointer, c.pointer, s.pointer, B: B, S: S, rotated: N, Hh: Hh, D: D, inverse: true)
            return [dx]
        }
    }

    /// `rmsNorm(weight:eps:)` and then, with tables, `applyRotary(cos:sin:)`, as one op when
    /// nothing is recorded (sampling): x [B, S, heads, D] (any strides, D contiguous: the q or k
    /// of a fused QKV projection) is read where it lies and each row normalised and rotated in
    /// one pass, where the separate ops copy x and write two tensors. The same arithmetic as
    /// the separate ops. Under a graph, the separate ops.
    public func rmsNormRotary(weight: Tensor, eps: Float, cos: Tensor?, sin: Tensor?) -> Tensor {
        guard !Tensor.willRecord([self, weight]), rank == 4, strides[3] == 1, shape[3] % 2 == 0 else {
            let n = rmsNorm(weight: weight, eps: eps)
            guard let cos, let sin else { return n }
            return n.applyRotary(cos: cos, sin: sin)
        }
        let B = shape[0], S = shape[1], Hh = shape[2], D = shape[3], N = cos?.shape[0] ?? 0
        precondition(weight.shape == [D], "rmsNorm: weight \(weight.shape) for last dim \(D)")
        if let cos, let sin { precondition(cos.shape == [N, D] && sin.shape == [N, D] && N <= S, "applyRotary: tables \(cos.shape) for x \(shape)") }
        let w = weight.contiguous(), c = cos?.contiguous(), s = sin?.contiguous()
        let out = Tensor(uninitialized: shape)
        let xp = UncheckedSendable(pointer), op = UncheckedSendable(out.pointer), wp = UncheckedSendable(w.pointer)
        let cp = UncheckedSendable(c?.pointer), sp = UncheckedSendable(s?.pointer), st = strides
        Parallel.chunks(B * S, grain: Swift.max(1, Parallel.grain / Swift.max(1, Hh * D))) { tokens in
            var bt = tokens.lowerBound
            while bt < tokens.upperBound {  // runs of tokens of one sample
                let b = bt / S, t = bt % S, run = Swift.min(tokens.upperBound - bt, S - t)
                let rotated = Swift.max(0, Swift.min(run, N - t))
                hv_rms_norm_rotary(xp.value + b * st[0] + t * st[1], st[1], st[2], run, op.value + bt * Hh * D, wp.value, eps,
                                   cp.value.map { $0 + t * D }, sp.value.map { $0 + t * D }, rotated, Hh, D)
                bt += run
            }
        }
        withExtendedLifetime((self, w, c, s)) {}
        return out
    }

    /// The rotation (or its transpose, for the backward pass).
    static func rotate(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<Float>, _ c: UnsafePointer<Float>,
                       _ s: UnsafePointer<Float>, B: Int, S: Int, rotated: Int, Hh: Int, D: Int, inverse: Bool) {
        let sign: Float = inverse ? -1 : 1
        let out = UncheckedSendable(o)
        Parallel.chunks(B * S, grain: Swift.max(1, Parallel.grain / Swift.max(1, Hh * D))) { tokens in
            let o = out.value
            for bt in tokens {
                let t = bt % S
                if t >= rotated {
                    (o + bt * Hh * D).update(from: x + bt * Hh * D, count: Hh * D)
                    continue
                }
                let cr = c + t * D, sr = s + t * D
                for h in 0..<Hh {
                    let base = (bt * Hh + h) * D
                    let xi = x + base, oi = o + base
                    var i = 0
                    while i < D {
                        let x0 = xi[i], x1 = xi[i + 1]
                        oi[i] = x0 * cr[i] - sign * x1 * sr[i + (inverse ? 1 : 0)]
                        oi[i + 1] = x1 * cr[i + 1] + sign * x0 * sr[i + (inverse ? 0 : 1)]
                        i += 2
                    }
                }
            }
        }
    }
}
