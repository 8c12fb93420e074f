import CHVKernels

/// LayerNorm, RMSNorm and GroupNorm with fused forward/backward.
/// Each normalises `rows` independent groups of `n` contiguous values.

/// xhat = (x - mean) * rstd per row (centered) or x * rstd (RMS); returns rstd per row.
private func normalizeRows(_ x: UnsafePointer<Float>, _ xhat: UnsafeMutablePointer<Float>, rows: Int, n: Int,
                           eps: Float, centered: Bool) -> [Float] {
    var rstd = [Float](repeating: 0, count: rows)
    for r in 0..<rows {
        let a = x + r * n, h = xhat + r * n
        var mean: Double = 0
        if centered {
            for i in 0..<n { mean += Double(a[i]) }
            mean /= Double(n)
        }
        let m = Float(mean)
        var v: Double = 0
        for i in 0..<n { let d = Double(a[i] - m); v += d * d }
        let rs = Float(1 / (v / Double(n) + Double(eps)).squareRoot())
        rstd[r] = rs
        for i in 0..<n { h[i] = (a[i] - m) * rs }
    }
    return rstd
}

/// dx = rstd * (dxhat - [mean(dxhat)] - xhat * mean(dxhat * xhat)) per row, in place on dxhat.
private func normalizeRowsBackward(_ dxhat: UnsafeMutablePointer<Float>, _ xhat: UnsafePointer<Float>, _ rstd: [Float],
                                   rows: Int, n: Int, centered: Bool) {
    for r in 0..<rows {
        let d = dxhat + r * n, h = xhat + r * n
        var sd: Double = 0, sdh: Double = 0
        for i in 0..<n { sd += Double(d[i]); sdh += Double(d[i] * h[i]) }
        let md = centered ? Float(sd / Double(n)) : 0
        let mdh = Float(sdh / Double(n))
        let rs = rstd[r]
        for i in 0..<n { d[i] = rs * (d[i] - md - h[i] * mdh) }
    }
}

extension Tensor {
    /// LayerNorm over the last axis; `weight`/`bias` [D] optional (HunyuanVideo's norms mostly have none).
    public func layerNorm(weight: Tensor? = nil, bias: Tensor? = nil, eps: Float = 1e-6) -> Tensor {
        lastAxisNorm(name: "layerNorm", weight: weight, bias: bias, eps: eps, centered: true)
    }

    /// RMSNorm over the last axis (QK-norm over the head dim): x / sqrt(mean(x^2) + eps) * weight.
    public func rmsNorm(weight: Tensor? = nil, eps: Float = 1e-6) -> Tensor {
        lastAxisNorm(name: "rmsNorm", weight: weight, bias: nil, eps: eps, centered: false)
    }

    private func lastAxisNorm(name: String, weight: Tensor?, bias: Tensor?, eps: Float, centered: Bool) -> Tensor {
        let n = shape[rank - 1], rows = count / max(n, 1)
        if let weight { precondition(weight.shape == [n], "\(name): weight \(weight.shape) for last dim \(n)") }
        if let bias { precondition(bias.shape == [n], "\(name): bias \(bias.shape) for last dim \(n)") }
        let x = contiguous()
        let xhat = Tensor(uninitialized: shape)
        let rstd = normalizeRows(x.pointer, xhat.pointer, rows: rows, n: n, eps: eps, centered: centered)
        let out: Tensor
        if weight != nil || bias != nil {
            out = Tensor(uninitialized: shape)
            let w = weight?.contiguous(), b = bias?.contiguous()
            let h = xhat.pointer, o = out.pointer
            for r in 0..<rows {
                for i in 0..<n {
                    var v = h[r * n + i]
                    if let w { v *= w.pointer[i] }
                    if let b { v += b.pointer[i] }
                    o[r * n + i] = v
                }
            }
        } else {
            out = xhat.copy()
        }
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        return Tensor.record(name, out, inputs) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: self.shape)
            let gp = gc.pointer, h = xhat.pointer, d = dx.pointer
            var grads: [Tensor?] = []
            if let weight {
                let w = weight.contiguous().pointer
                for r in 0..<rows { for i in 0..<n { d[r * n + i] = gp[r * n + i] * w[i] } }
            } else {
                d.update(from: gp, count: self.count)
            }
            normalizeRowsBackward(d, h, rstd, rows: rows, n: n, centered: centered)
            grads.append(dx)
            if weight != nil { grads.append(Tensor.zipMap(gc, xhat, *).reshapeRaw([rows, n]).sumRaw(axes: [0]).reshapeRaw([n])) }
            if bias != nil { grads.append(gc.reshapeRaw([rows, n]).sumRaw(axes: [0]).reshapeRaw([n])) }
            return grads
        }
    }

    /// GroupNorm over x [N, C, *spatial] with `groups` groups; weight/bias [C] optional.
    /// `silu`: then x * sigmoid(x) (the VAE's norm -> SiLU), in place when nothing is recorded.
    public func groupNorm(groups: Int, weight: Tensor? = nil, bias: Tensor? = nil, eps: Float = 1e-6, silu: Bool = false) -> Tensor {
        precondition(rank >= 2, "groupNorm needs [N, C, ...], got \(shape)")
        let N = shape[0], C = shape[1]
        precondition(C % groups == 0, "groupNorm: \(C) channels not divisible by \(groups) groups")
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        let recording = Tensor.willRecord(inputs)
        if silu && recording { return groupNorm(groups: groups, weight: weight, bias: bias, eps: eps).silu() }
        let S = count / (N * C), cg = C / groups
        let rows = N * groups, n = cg * S
        let x = contiguous()
        // Without a graph, x-hat is normalised straight into the output (one activation fewer).
        let out = Tensor(uninitialized: shape)
        let xhat = recording ? Tensor(uninitialized: shape) : out
        let rstd = normalizeRows(x.pointer, xhat.pointer, rows: rows, n: n, eps: eps, centered: true)
        let w = weight?.contiguous(), b = bias?.contiguous()
        do {
            let h = xhat.pointer, o = out.pointer
            for b0 in 0..<N {
                for c in 0..<C {
                    let scale = w?.pointer[c] ?? 1, shift = b?.pointer[c] ?? 0
                    let base = (b0 * C + c) * S
                    for s in 0..<S { o[base + s] = h[base + s] * scale + shift }
                }
            }
        }
        if silu { hv_silu_forward(out.pointer, out.pointer, count) }
        return Tensor.record("groupNorm", out, inputs) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: self.shape)
            let gp = gc.pointer, h = xhat.pointer, d = dx.pointer
            var dw = [Float](repeating: 0, count: C), db = [Float](repeating: 0, count: C)
            for b0 in 0..<N {
                for c in 0..<C {
                    let scale = w?.pointer[c] ?? 1
                    let base = (b0 * C + c) * S
                    var sw: Float = 0, sb: Float = 0
                    for s in 0..<S {
                        sw += gp[base + s] * h[base + s]
                        sb += gp[base + s]
                        d[base + s] = gp[base + s] * scale
                    }
                    dw[c] += sw; db[c] += sb
                }
            }
            normalizeRowsBackward(d, h, rstd, rows: rows, n: n, centered: true)
            var grads: [Tensor?] = [dx]
            if weight != nil { grads.append(Tensor(dw, shape: [C])) }
            if bias != nil { grads.append(Tensor(db, shape: [C])) }
            return grads
        }
    }
}
