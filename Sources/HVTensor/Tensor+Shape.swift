/// Concatenation, splitting, embedding lookup and nearest up-sampling.
extension Tensor {
    /// torch.cat along `axis`.
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        precondition(!tensors.isEmpty, "concat of no tensors")
        let first = tensors[0]
        let ax = normalizeAxis(axis, rank: first.rank)
        for t in tensors {
            precondition(t.rank == first.rank && (0..<t.rank).allSatisfy { $0 == ax || t.shape[$0] == first.shape[$0] },
                         "concat along \(ax): \(t.shape) vs \(first.shape)")
        }
        var outShape = first.shape
        outShape[ax] = tensors.reduce(0) { $0 + $1.shape[ax] }
        let outer = first.shape[..<ax].reduce(1, *)
        let inner = first.shape[(ax + 1)...].reduce(1, *)
        let out = Tensor(uninitialized: outShape)
        let rowOut = outShape[ax] * inner
        var start = 0
        let o = out.pointer
        for t in tensors {
            let c = t.contiguous()
            let len = t.shape[ax] * inner, src = c.pointer, at = start
            if outer == 1 {
                Parallel.chunks(len) { r in (o + at + r.lowerBound).update(from: src + r.lowerBound, count: r.count) }
            } else {
                Parallel.chunks(outer, grain: Swift.max(1, Parallel.grain / Swift.max(len, 1))) { rows in
                    for i in rows { (o + i * rowOut + at).update(from: src + i * len, count: len) }
                }
            }
            withExtendedLifetime(c) {}
            start += len
        }
        let sizes = tensors.map { $0.shape[ax] }
        return record("concat", out, tensors) { g in
            var offset = 0
            return sizes.map { s in
                defer { offset += s }
                return g.slice(axis: ax, start: offset, length: s).contiguous()
            }
        }
    }

    /// Pieces of the given sizes along `axis` (views).
    public func split(_ sizes: [Int], axis: Int) -> [Tensor] {
        let ax = normalizeAxis(axis, rank: rank)
        precondition(sizes.reduce(0, +) == shape[ax], "split sizes \(sizes) for axis \(ax) of size \(shape[ax])")
        var start = 0
        return sizes.map { s in
            defer { start += s }
            return slice(axis: ax, start: start, length: s)
        }
    }

    /// `n` equal pieces along `axis` (torch.chunk with a divisible size).
    public func chunk(_ n: Int, axis: Int) -> [Tensor] {
        let ax = normalizeAxis(axis, rank: rank)
        precondition(shape[ax] % n == 0, "chunk: axis \(ax) of size \(shape[ax]) not divisible by \(n)")
        return split([Int](repeating: shape[ax] / n, count: n), axis: ax)
    }

    /// Rows of `table` [V, D] at `indices` -> [indices.count..., D] with `indicesShape`.
    public static func embedding(_ table: Tensor, indices: [Int], indicesShape: [Int]? = nil) -> Tensor {
        precondition(table.rank == 2, "embedding table must be [V, D], got \(table.shape)")
        let V = table.shape[0], D = table.shape[1]
        let t = table.contiguous()
        let out = Tensor(uninitialized: (indicesShape ?? [indices.count]) + [D])
        precondition(shapeCount(indicesShape ?? [indices.count]) == indices.count, "embedding: indices shape mismatch")
        for (i, ix) in indices.enumerated() {
            precondition(ix >= 0 && ix < V, "embedding index \(ix) out of range 0..<\(V)")
            (out.pointer + i * D).update(from: t.pointer + ix * D, count: D)
        }
        return record("embedding", out, [table]) { g in
            let gc = g.contiguous()
            let dt = Tensor(zeros: [V, D])
            for (i, ix) in indices.enumerated() {
                let d = dt.pointer + ix * D, s = gc.pointer + i * D
                for j in 0..<D { d[j] += s[j] }
            }
            return [dt]
        }
    }

    /// Nearest up-sampling of x [N, C, T, H, W] by integer factors.
    public func upsampleNearest(scale: (t: Int, h: Int, w: Int)) -> Tensor {
        upsampleNearest(scale: scale, skipFrames: 0)
    }

    /// The causal VAE's up-sampling: frame 0 only in space, the others by all factors, i.e.
    /// `upsampleNearest(scale:)` without its first st - 1 frames: [N, C, 1 + st·(T-1), sh·H, sw·W]
    /// (one output instead of two pieces and their concatenation).
    public func causalUpsampleNearest(scale: (t: Int, h: Int, w: Int)) -> Tensor {
        upsampleNearest(scale: scale, skipFrames: scale.t - 1)
    }

    /// Output frame t is input frame (t + skipFrames) / st.
    private func upsampleNearest(scale: (t: Int, h: Int, w: Int), skipFrames: Int) -> Tensor {
        precondition(rank == 5, "upsampleNearest expects [N, C, T, H, W], got \(shape)")
        let (st, sh, sw) = scale
        let NC = shape[0] * shape[1], T = shape[2], H = shape[3], W = shape[4]
        let To = T * st - skipFrames, Ho = H * sh, Wo = W * sw
        let x = contiguous()
        let out = Tensor(uninitialized: [shape[0], shape[1], To, Ho, Wo])
        let p = x.pointer, o = out.pointer
        for c in 0..<NC {
            for t in 0..<To {
                for h in 0..<Ho {
                    let src = p + ((c * T + (t + skipFrames) / st) * H + h / sh) * W
                    let dst = o + ((c * To + t) * Ho + h) * Wo
                    for w in 0..<Wo { dst[w] = src[w / sw] }
                }
            }
        }
        let inShape = shape
        return Tensor.record("upsampleNearest", out, [self]) { g in
            let gc = g.contiguous()
            let dx = Tensor(zeros: inShape)
            let gp = gc.pointer, d = dx.pointer
            for c in 0..<NC {
                for t in 0..<To {
                    for h in 0..<Ho {
                        let dst = d + ((c * T + (t + skipFrames) / st) * H + h / sh) * W
                        let src = gp + ((c * To + t) * Ho + h) * Wo
                        for w in 0..<Wo { dst[w / sw] += src[w] }
                    }
                }
            }
            return [dx]
        }
    }
}
