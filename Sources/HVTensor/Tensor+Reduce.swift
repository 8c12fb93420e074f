import CHVKernels
import Foundation

extension Tensor {
    /// Sum over `axes` keeping them as size-1 dims; no graph.
    func sumRaw(axes: [Int]) -> Tensor {
        var cur = contiguous()
        for ax in Set(axes.map { normalizeAxis($0, rank: rank) }).sorted(by: >) {
            let outer = cur.shape[..<ax].reduce(1, *)
            let n = cur.shape[ax]
            let inner = cur.shape[(ax + 1)...].reduce(1, *)
            var s = cur.shape
            s[ax] = 1
            let out = Tensor(zeros: s)
            let p = cur.pointer, o = out.pointer
            if inner == 1 {
                // Rows of n contiguous values (the last axis; bias gradients' spatial sums): a
                // vectorised row sum, where the loop below would chain n scalar adds through dst.
                Parallel.chunks(outer, grain: Swift.max(1, Parallel.grain / Swift.max(1, n))) { part in
                    for i in part { o[i] = hv_row_sum(p + i * n, n) }
                }
                cur = out
                continue
            }
            if outer == 1 {
                // Column sums (bias gradients): threads take blocks of 64 columns.
                let blocks = (inner + 63) / 64
                Parallel.chunks(blocks, grain: Swift.max(1, Parallel.grain / Swift.max(1, 64 * n))) { part in
                    let lo = part.lowerBound * 64, hi = Swift.min(inner, part.upperBound * 64)
                    hv_column_sums(p + lo, n, hi - lo, inner, o + lo)
                }
                cur = out
                continue
            }
            Parallel.chunks(outer, grain: Swift.max(1, Parallel.grain / Swift.max(1, n * inner))) { part in
                for i in part {
                    let dst = o + i * inner
                    for j in 0..<n {
                        let src = p + (i * n + j) * inner
                        for k in 0..<inner { dst[k] += src[k] }
                    }
                }
            }
            cur = out
        }
        return cur
    }

    /// Sum over `axes` (all axes when nil).
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let ax = (axes ?? Array(0..<rank)).map { normalizeAxis($0, rank: rank) }
        let kept = sumRaw(axes: ax)
        var outShape = kept.shape
        if !keepDims { outShape = shape.enumerated().filter { !ax.contains($0.offset) }.map(\.element) }
        let out = kept.reshapeRaw(outShape)
        let keptShape = kept.shape, inShape = shape
        return Tensor.record("sum", out, [self]) { g in
            [broadcastBinary(g.reshapeRaw(keptShape), Tensor(zeros: inShape), .add)]
        }
    }

    public func sum(axis: Int, keepDims: Bool = false) -> Tensor { sum(axes: [axis], keepDims: keepDims) }

    public func mean(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let ax = (axes ?? Array(0..<rank)).map { normalizeAxis($0, rank: rank) }
        let n = ax.reduce(1) { $0 * shape[$1] }
        return sum(axes: ax, keepDims: keepDims) * (1 / Float(n))
    }

    public func mean(axis: Int, keepDims: Bool = false) -> Tensor { mean(axes: [axis], keepDims: keepDims) }

    /// Softmax along `axis` (default last), numerically stable.
    public func softmax(axis: Int = -1) -> Tensor {
        let ax = normalizeAxis(axis, rank: rank)
        if ax != rank - 1 { return transpose(ax, rank - 1).softmax(axis: -1).transpose(ax, rank - 1) }
        let x = contiguous()
        let n = shape[rank - 1], rows = count / max(n, 1)
        let out = Tensor(uninitialized: shape)
        let p = x.pointer, o = out.pointer
        for r in 0..<rows {
            let a = p + r * n, y = o + r * n
            y.update(from: a, count: n)
            let m = hv_row_max(y, n)
            if m == -.infinity {  // every entry -inf: uniform (as it came out before the exponential gave exact zeros, 0/0 now)
                for i in 0..<n { y[i] = 1 / Float(n) }
                continue
            }
            let inv = 1 / hv_exp_shift_sum(y, n, m)
            for i in 0..<n { y[i] *= inv }
        }
        return Tensor.record("softmax", out, [self]) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: out.shape)
            let gp = gc.pointer, yp = out.pointer, d = dx.pointer
            for r in 0..<rows {
                var dot: Float = 0
                for i in 0..<n { dot += gp[r * n + i] * yp[r * n + i] }
                for i in 0..<n { d[r * n + i] = yp[r * n + i] * (gp[r * n + i] - dot) }
            }
            return [dx]
        }
    }

    /// Mean squared error over all elements (flow matching's velocity loss).
    public func mseLoss(_ target: Tensor) -> Tensor {
        precondition(shape == target.shape, "mseLoss \(shape) vs \(target.shape)")
        let a = contiguous(), b = target.contiguous()
        let n = count
        var s: Double = 0
        let p = a.pointer, q = b.pointer
        for i in 0..<n { let d = Double(p[i] - q[i]); s += d * d }
        let out = Tensor(scalar: Float(s / Double(n)))
        return Tensor.record("mse", out, [self, target]) { g in
            let scale = 2 * g.item / Float(n)
            let diff = Tensor.zipMap(a, b) { ($0 - $1) * scale }
            return [self.requiresGrad ? diff : nil, target.requiresGrad ? diff.neg() : nil]
        }
    }
}

extension Tensor {
    /// Mean absolute error over all elements (the VAE's reconstruction loss).
    public func l1Loss(_ target: Tensor) -> Tensor {
        precondition(shape == target.shape, "l1Loss \(shape) vs \(target.shape)")
        let a = contiguous(), b = target.contiguous()
        let n = count
        var s: Double = 0
        for i in 0..<n { s += Double(abs(a.pointer[i] - b.pointer[i])) }
        let out = Tensor(scalar: Float(s / Double(n)))
        return Tensor.record("l1", out, [self, target]) { g in
            let scale = g.item / Float(n)
            let d = Tensor.zipMap(a, b) { $0 > $1 ? scale : ($0 < $1 ? -scale : 0) }
            return [self.requiresGrad ? d : nil, target.requiresGrad ? d.neg() : nil]
        }
    }
}
