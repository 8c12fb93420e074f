/// Padding of a 3D convolution's input. `causal(kernel:)` is HunyuanVideo's CausalConv3d:
/// kt-1 frames in front and none behind (frame t never sees t+1), kh/2 and kw/2 on each
/// spatial side, replicate mode.
public struct Conv3dPadding: Sendable, Equatable {
    public enum Mode: Sendable { case zeros, replicate }
    public var front: Int, back: Int, height: Int, width: Int
    public var mode: Mode

    public init(front: Int = 0, back: Int = 0, height: Int = 0, width: Int = 0, mode: Mode = .zeros) {
        self.front = front; self.back = back; self.height = height; self.width = width; self.mode = mode
    }

    public static let none = Conv3dPadding()

    /// For each of `n` padded positions along an axis with `before` padding, the stored index
    /// (0..<size) it reads: the nearest edge when replicating, -1 (a zero) otherwise.
    func sourceIndices(_ n: Int, before: Int, size: Int) -> [Int] {
        (0..<n).map { i in
            let s = i - before
            if s >= 0 && s < size { return s }
            return mode == .replicate ? Swift.min(Swift.max(s, 0), size - 1) : -1
        }
    }

    public static func causal(kernel: (t: Int, h: Int, w: Int), mode: Mode = .replicate) -> Conv3dPadding {
        Conv3dPadding(front: kernel.t - 1, back: 0, height: kernel.h / 2, width: kernel.w / 2, mode: mode)
    }

    var isZero: Bool { front == 0 && back == 0 && height == 0 && width == 0 }
}

extension Tensor {
    /// Floats of im2col columns per GEMM (64 MB): conv3d takes as many output rows (t, ho) as
    /// fit, at least one. Tests lower it to cut frames into several chunks.
    nonisolated(unsafe) public static var im2colBudget = 1 << 24

    /// Pads x [N, C, T, H, W] in time (front/back) and space (symmetric), zeros or replicate.
    public func pad3d(_ pad: Conv3dPadding) -> Tensor {
        precondition(rank == 5, "pad3d expects [N, C, T, H, W], got \(shape)")
        if pad.isZero { return self }
        let NC = shape[0] * shape[1], T = shape[2], H = shape[3], W = shape[4]
        let To = T + pad.front + pad.back, Ho = H + 2 * pad.height, Wo = W + 2 * pad.width
        // Source index per padded index, -1 for a zero.
        let mt = pad.sourceIndices(To, before: pad.front, size: T), mh = pad.sourceIndices(Ho, before: pad.height, size: H)
        let mw = pad.sourceIndices(Wo, before: pad.width, size: W)
        let x = contiguous()
        let out = Tensor(uninitialized: [shape[0], shape[1], To, Ho, Wo])
        let p = x.pointer, o = out.pointer
        for c in 0..<NC {
            for t in 0..<To {
                for h in 0..<Ho {
                    let dst = o + ((c * To + t) * Ho + h) * Wo
                    let st = mt[t], sh = mh[h]
                    if st < 0 || sh < 0 { dst.update(repeating: 0, count: Wo); continue }
                    let src = p + ((c * T + st) * H + sh) * W
                    for w in 0..<Wo { dst[w] = mw[w] < 0 ? 0 : src[mw[w]] }
                }
            }
        }
        let inShape = shape
        return Tensor.record("pad3d", out, [self]) { g in
            let gc = g.contiguous()
            let dx = Tensor(zeros: inShape)
            let gp = gc.pointer, d = dx.pointer
            for c in 0..<NC {
                for t in 0..<To {
                    let st = mt[t]
                    if st < 0 { continue }
                    for h in 0..<Ho {
                        let sh = mh[h]
                        if sh < 0 { continue }
                        let src = gp + ((c * To + t) * Ho + h) * Wo
                        let dst = d + ((c * T + st) * H + sh) * W
                        for w in 0..<Wo where mw[w] >= 0 { dst[mw[w]] += src[w] }
                    }
                }
            }
            return [dx]
        }
    }

    /// 3D convolution: x [N, Ci, T, H, W], weight [Co, Ci, kt, kh, kw], bias [Co].
    /// Narrow layers run the direct kernels on a padded copy (Conv3dDirect); the others are
    /// lowered to im2col + sgemm over a few output rows at a time, the padding read through
    /// index maps instead of a padded copy: at the VAE's widest layers (256 channels at
    /// 13 x 144 x 144) the padded copy alone is 330 MB and a whole frame of columns 570 MB.
    public func conv3d(_ weight: Tensor, bias: Tensor? = nil, stride: (t: Int, h: Int, w: Int) = (1, 1, 1),
                       padding: Conv3dPadding = .none) -> Tensor {
        precondition(rank == 5 && weight.rank == 5, "conv3d: input \(shape), weight \(weight.shape)")
        precondition(weight.shape[1] == shape[1], "conv3d: weight \(weight.shape) expects \(weight.shape[1]) input channels, input has \(shape[1])")
        let Co = weight.shape[0], kt = weight.shape[2], kh = weight.shape[3], kw = weight.shape[4]
        let direct = Conv3dDirect.applies(inChannels: shape[1], outChannels: Co, kernel: (kh, kw), stride: stride)
        let input = direct ? pad3d(padding) : self, pad = direct ? Conv3dPadding.none : padding
        let x = input.contiguous(), w = weight.contiguous()
        // x [N, Ci, Ti, Hi, Wi] is read as if padded to [N, Ci, T, H, W].
        let N = x.shape[0], Ci = x.shape[1], Ti = x.shape[2], Hi = x.shape[3], Wi = x.shape[4]
        let T = Ti + pad.front + pad.back, H = Hi + 2 * pad.height, W = Wi + 2 * pad.width
        let (st, sh, sw) = stride
        precondition(T >= kt && H >= kh && W >= kw, "conv3d: kernel \(weight.shape) larger than padded input \(shape) with \(padding)")
        let To = (T - kt) / st + 1, Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1
        let K = Ci * kt * kh * kw, HWo = Ho * Wo, P = To * HWo, rows = To * Ho
        if let bias { precondition(bias.shape == [Co], "conv3d: bias \(bias.shape) for \(Co) outputs") }
        let rowsPerChunk = Swift.max(1, Swift.min(rows, Tensor.im2colBudget / Swift.max(1, K * Wo)))
        let out = Tensor(uninitialized: [N, Co, To, Ho, Wo])
        let cols = UnsafeMutablePointer<Float>.allocate(capacity: direct ? 0 : K * rowsPerChunk * Wo)
        defer { cols.deallocate() }

        // Padded index -> stored index (-1: a zero), per axis.
        let mt = pad.sourceIndices(T, before: pad.front, size: Ti), mh = pad.sourceIndices(H, before: pad.height, size: Hi)
        let mw = pad.sourceIndices(W, before: pad.width, size: Wi)
        // Per kernel column dw: the outputs wo in lo..<hi read stored column wo * sw + dw - width
        // (inside the input); the others go through mw.
        let inside: [Range<Int>] = (0..<kw).map { dw in
            let lo = Swift.min(Wo, Swift.max(0, (pad.width - dw + sw - 1) / sw))
            let hi = Swift.max(lo, Swift.min(Wo, (Wi + pad.width - dw + sw - 1) / sw))
            return lo..<hi
        }

        // cols[k, (r - r0) * Wo + wo] = padded x[n, ci, t*st+dt, ho*sh+dh, wo*sw+dw] for rows r = t * Ho + ho.
        func im2col(_ n: Int, _ r0: Int, _ nr: Int, _ cols: UnsafeMutablePointer<Float>) {
            let pc = nr * Wo
            let xn = x.pointer + n * Ci * Ti * Hi * Wi
            for ci in 0..<Ci { for dt in 0..<kt { for dh in 0..<kh { for dw in 0..<kw {
                let row = cols + (((ci * kt + dt) * kh + dh) * kw + dw) * pc
                let inner = inside[dw], shift = dw - pad.width
                for r in r0..<(r0 + nr) {
                    let dst = row + (r - r0) * Wo
                    let ti = mt[(r / Ho) * st + dt], hi = mh[(r % Ho) * sh + dh]
                    if ti < 0 || hi < 0 { dst.update(repeating: 0, count: Wo); continue }
                    let src = xn + (ci * Ti + ti) * Hi * Wi + hi * Wi
                    for wo in 0..<inner.lowerBound { let s = mw[wo * sw + dw]; dst[wo] = s < 0 ? 0 : src[s] }
                    if sw == 1 {
                        (dst + inner.lowerBound).update(from: src + inner.lowerBound + shift, count: inner.count)
                    } else {
                        for wo in inner { dst[wo] = src[wo * sw + shift] }
                    }
                    for wo in inner.upperBound..<Wo { let s = mw[wo * sw + dw]; dst[wo] = s < 0 ? 0 : src[s] }
                }
            }}}}
        }

        let geometry = Conv3dDirect.Geometry(ci: Ci, tp: T, hp: H, wp: W, co: Co, kt: kt, kh: kh, kw: kw)
        let threads = BLAS.threads
        let packed = direct ? Conv3dDirect.packedWeight(w, flipped: false) : nil
        for n in 0..<N {
            if let packed {
                Conv3dDirect.forward(x.pointer + n * geometry.inSize, geometry, packed: packed, out: out.pointer + n * Co * P, threads: threads)
            }
            var r0 = 0
            while !direct && r0 < rows {
                let nr = Swift.min(rowsPerChunk, rows - r0)
                im2col(n, r0, nr, cols)
                BLAS.sgemm(m: Co, n: nr * Wo, k: K, a: w.pointer, lda: K, b: cols, ldb: nr * Wo,
                           c: out.pointer + n * Co * P + r0 * Wo, ldc: P)
                r0 += nr
            }
            if let bias {
                let bp = bias.contiguous().pointer
                for c in 0..<Co { let o = out.pointer + (n * Co + c) * P; let b = bp[c]; for i in 0..<P { o[i] += b } }
            }
        }
        var inputs = [input, weight]
        if let bias { inputs.append(bias) }
        return Tensor.record("conv3d", out, inputs) { g in
            let gc = g.contiguous()
            let dx: Tensor? = input.requiresGrad ? Tensor(zeros: x.shape) : nil
            let dw: Tensor? = weight.requiresGrad ? Tensor(zeros: w.shape) : nil
            if direct {
                let flipped = dx != nil ? Conv3dDirect.packedWeight(w, flipped: true) : nil
                for n in 0..<N {
                    let xn = x.pointer + n * geometry.inSize, gn = gc.pointer + n * Co * P
                    if let dw { Conv3dDirect.weightGrad(xn, gn, geometry, dw: dw.pointer, threads: threads) }
                    if let dx, let flipped {
                        Conv3dDirect.inputGrad(gn, geometry, flippedPacked: flipped, dx: dx.pointer + n * geometry.inSize, threads: threads)
                    }
                }
            }
            let chunkCapacity = direct ? 0 : K * rowsPerChunk * Wo
            let cols = UnsafeMutablePointer<Float>.allocate(capacity: chunkCapacity)
            let dcols = UnsafeMutablePointer<Float>.allocate(capacity: chunkCapacity)
            defer { cols.deallocate(); dcols.deallocate() }
            for n in 0..<N where !direct {
                var r0 = 0
                while r0 < rows {
                    let nr = Swift.min(rowsPerChunk, rows - r0)
                    let pc = nr * Wo
                    let gChunk = gc.pointer + n * Co * P + r0 * Wo
                    if let dw {
                        im2col(n, r0, nr, cols)
                        BLAS.sgemm(transB: true, m: Co, n: K, k: pc, a: gChunk, lda: P, b: cols, ldb: pc, beta: 1, c: dw.pointer, ldc: K)
                    }
                    if let dx {
                        BLAS.sgemm(transA: true, m: K, n: pc, k: Co, a: w.pointer, lda: K, b: gChunk, ldb: P, c: dcols, ldc: pc)
                        // col2im: scatter-add back through the padding maps (replicated borders sum).
                        let dxn = dx.pointer + n * Ci * Ti * Hi * Wi
                        for ci in 0..<Ci { for dt in 0..<kt { for dh in 0..<kh { for dwi in 0..<kw {
                            let row = dcols + (((ci * kt + dt) * kh + dh) * kw + dwi) * pc
                            let inner = inside[dwi], shift = dwi - pad.width
                            for r in r0..<(r0 + nr) {
                                let ti = mt[(r / Ho) * st + dt], hi = mh[(r % Ho) * sh + dh]
                                if ti < 0 || hi < 0 { continue }
                                let dst = dxn + (ci * Ti + ti) * Hi * Wi + hi * Wi
                                let src = row + (r - r0) * Wo
                                for wo in 0..<inner.lowerBound { let s = mw[wo * sw + dwi]; if s >= 0 { dst[s] += src[wo] } }
                                for wo in inner { dst[wo * sw + shift] += src[wo] }
                                for wo in inner.upperBound..<Wo { let s = mw[wo * sw + dwi]; if s >= 0 { dst[s] += src[wo] } }
                            }
                        }}}}
                    }
                    r0 += nr
                }
            }
            var grads: [Tensor?] = [dx, dw]
            if let bias {
                grads.append(bias.requiresGrad ? gc.reshapeRaw([N, Co, P]).sumRaw(axes: [0, 2]).reshapeRaw([Co]) : nil)
            }
            return grads
        }
    }
}
