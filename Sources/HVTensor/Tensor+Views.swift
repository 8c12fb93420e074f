/// Views share storage; their backward rules map the gradient back to the source layout.
extension Tensor {
    /// Contiguous layout; returns `self` when already contiguous.
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        let out = copy()
        return Tensor.record("contiguous", out, [self]) { g in [g] }
    }

    func resolveShape(_ newShape: [Int]) -> [Int] {
        var s = newShape
        if let i = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != i }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            s[i] = count / known
        }
        precondition(shapeCount(s) == count, "cannot reshape \(shape) (\(count) elements) to \(newShape)")
        return s
    }

    /// Reshape without graph history.
    func reshapeRaw(_ newShape: [Int]) -> Tensor {
        let s = resolveShape(newShape)
        let c = isContiguous ? self : copy()
        return Tensor(storage: c.storage, shape: s, offset: c.offset)
    }

    /// Reshape (one dimension may be -1). A view when contiguous, else a copy.
    public func reshape(_ newShape: [Int]) -> Tensor {
        let out = reshapeRaw(newShape)
        let original = shape
        return Tensor.record("reshape", out, [self]) { g in [g.reshapeRaw(original)] }
    }

    public func flatten() -> Tensor { reshape([count]) }

    /// Without a graph, a fused projection [B, L, 3 * heads * D] whose rows lie at one stride
    /// (contiguous, or a column slice of a wider projection) as views q, k, v [B, L, heads, D]
    /// (no copy); nil under a graph or for another layout.
    public func qkvViews(heads: Int) -> (q: Tensor, k: Tensor, v: Tensor)? {
        guard rank == 3, heads > 0, shape[2] % (3 * heads) == 0, !Tensor.willRecord([self]), let rs = rowStride else { return nil }
        let B = shape[0], L = shape[1], D = shape[2] / (3 * heads)
        let views = (0..<3).map { Tensor(storage: storage, shape: [B, L, heads, D], strides: [L * rs, rs, D, 1], offset: offset + $0 * heads * D) }
        return (views[0], views[1], views[2])
    }

    /// A size-1 axis inserted at `axis`: always a view (strided tensors are not copied).
    public func unsqueeze(_ axis: Int) -> Tensor {
        let a = axis < 0 ? axis + rank + 1 : axis
        precondition(a >= 0 && a <= rank, "unsqueeze axis \(axis) for rank \(rank)")
        var s = shape, st = strides
        s.insert(1, at: a)
        st.insert(a < rank ? strides[a] * shape[a] : 1, at: a)
        return sizeOneAxisView(s, st)
    }

    /// The size-1 axis `axis` removed: always a view (strided tensors are not copied).
    public func squeeze(_ axis: Int) -> Tensor {
        let a = normalizeAxis(axis, rank: rank)
        precondition(shape[a] == 1, "squeeze axis \(axis) of size \(shape[a])")
        var s = shape, st = strides
        s.remove(at: a)
        st.remove(at: a)
        return sizeOneAxisView(s, st)
    }

    private func sizeOneAxisView(_ s: [Int], _ st: [Int]) -> Tensor {
        let out = Tensor(storage: storage, shape: s, strides: st, offset: offset)
        let original = shape
        return Tensor.record("reshape", out, [self]) { g in [g.reshapeRaw(original)] }
    }

    /// Axis permutation view: result axis i is source axis `dims[i]`.
    public func permute(_ dims: [Int]) -> Tensor {
        precondition(dims.sorted() == Array(0..<rank), "permute \(dims) for rank \(rank)")
        let out = Tensor(storage: storage, shape: dims.map { shape[$0] }, strides: dims.map { strides[$0] }, offset: offset)
        var inverse = [Int](repeating: 0, count: rank)
        for (i, d) in dims.enumerated() { inverse[d] = i }
        return Tensor.record("permute", out, [self]) { g in [g.permute(inverse)] }
    }

    public func transpose(_ a: Int, _ b: Int) -> Tensor {
        var dims = Array(0..<rank)
        dims.swapAt(normalizeAxis(a, rank: rank), normalizeAxis(b, rank: rank))
        return permute(dims)
    }

    /// Narrow view along `axis`: elements `start ..< start + length` (torch.narrow).
    public func slice(axis: Int, start: Int, length: Int) -> Tensor {
        let ax = normalizeAxis(axis, rank: rank)
        precondition(start >= 0 && length >= 0 && start + length <= shape[ax], "slice \(start)..<\(start + length) of axis \(ax) size \(shape[ax])")
        var s = shape
        s[ax] = length
        let out = Tensor(storage: storage, shape: s, strides: strides, offset: offset + start * strides[ax])
        let fullShape = shape
        // The region of a contiguous full-size gradient that this slice covers.
        func region(_ full: Tensor) -> Tensor {
            Tensor(storage: full.storage, shape: s, strides: full.strides, offset: full.offset + start * full.strides[ax])
        }
        return Tensor.record("slice", out, [self], accumulate: { g, into in copyInto(region(into), g, adding: true) }) { g in
            let full = Tensor(zeros: fullShape)
            copyInto(region(full), g)
            return [full]
        }
    }
}

/// Copies `src` into the (possibly strided) view `dst` elementwise, or adds it to `dst`'s values
/// with `adding`; same shapes.
func copyInto(_ dst: Tensor, _ src: Tensor, adding: Bool = false) {
    precondition(dst.shape == src.shape)
    if dst.isContiguous && !adding { copyStrided(from: src, to: dst.pointer); return }
    // Iterate dst's strided layout over a contiguous copy of src.
    let s = src.contiguous()
    let n = dst.count
    if n == 0 { return }
    let rank = dst.rank
    let inner = dst.shape[rank - 1], innerStride = dst.strides[rank - 1]
    let d = dst.pointer, p = s.pointer
    Parallel.chunks(n / inner, grain: Swift.max(1, Parallel.grain / inner)) { rows in
        Parallel.forEachRow(dst.shape, [dst.strides], rows) { row, off in
            let o = d + off[0], q = p + row * inner
            if adding {
                for i in 0..<inner { o[i * innerStride] += q[i] }
            } else if innerStride == 1 {
                o.update(from: q, count: inner)
            } else {
                for i in 0..<inner { o[i * innerStride] = q[i] }
            }
        }
    }
    withExtendedLifetime(s) {}
}
