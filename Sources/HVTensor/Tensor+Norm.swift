/// LayerNorm, RMSNorm and GroupNorm with fused forward/backward.
/// Each normalises `rows` independent groups of `n` contiguous values.

import CHVKernels

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
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        let x = contiguous(), out = Tensor(uninitialized: shape)
        // Without a graph (sampling), x-hat is not kept: it is normalised straight into the output
        // (the affine, if any, applied in place), one buffer and one copy fewer.
        let recording = Tensor.willRecord(inputs)
        let xhat = recording ? Tensor(uninitialized: shape) : out
        let w = weight?.contiguous(), b = bias?.contiguous()
        let outPointer = recording || w != nil || b != nil ? out.pointer : nil
        var rstd = [Float](repeating: 0, count: rows)
        rstd.withUnsafeMutableBufferPointer { r in
            guard let rp = r.baseAddress else { return }  // no rows
            let xp = x.pointer, hp = xhat.pointer, wp = w?.pointer, bp = b?.pointer
            Parallel.chunks(rows, grain: Swift.max(1, Parallel.grain / Swift.max(n, 1))) { part in
                let o = part.lowerBound * n
                hv_norm_rows(xp + o, hp + o, outPointer.map { $0 + o }, rp + part.lowerBound, wp, bp, part.count, n, eps, centered ? 1 : 0)
            }
        }
        return Tensor.record(name, out, inputs) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: self.shape)
            rstd.withUnsafeBufferPointer { r in
                guard let rp = r.baseAddress else { return }  // no rows
                let gp = gc.pointer, wp = w?.pointer, hp = xhat.pointer, dp = dx.pointer
                Parallel.chunks(rows, grain: Swift.max(1, Parallel.grain / Swift.max(n, 1))) { part in
                    let o = part.lowerBound * n
                    hv_norm_rows_backward(gp + o, wp, hp + o, rp + part.lowerBound, dp + o, part.count, n, centered ? 1 : 0)
                }
            }
            var grads: [Tensor?] = [dx]
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
        var rstd = [Float](repeating: 0, count: rows)
        rstd.withUnsafeMutableBufferPointer { r in
            hv_norm_rows(x.pointer, xhat.pointer, nil, r.baseAddress, nil, nil, rows, n, eps, 1)
        }
        let w = weight?.contiguous(), b = bias?.contiguous()
        do {
            let h = xhat.pointer, o = out.pointer, wp = w?.pointer, bp = b?.pointer
            for b0 in 0..<N {
                for c in 0..<C {
                    let scale = wp?[c] ?? 1, shift = bp?[c] ?? 0
                    let base = (b0 * C + c) * S
                    for s in 0..<S { o[base + s] = h[base + s] * scale + shift }
                }
            }
        }
        if silu { hv_silu_inplace(out.pointer, count) }
        return Tensor.record("groupNorm", out, inputs) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: self.shape)
            let gp = gc.pointer, h = xhat.pointer, d = dx.pointer, wp = w?.pointer
            var dw = [Float](repeating: 0, count: C), db = [Float](repeating: 0, count: C)
            for b0 in 0..<N {
                for c in 0..<C {
                    let scale = wp?[c] ?? 1
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
            rstd.withUnsafeBufferPointer { r in hv_norm_rows_backward(d, nil, h, r.baseAddress, d, rows, n, 1) }
            var grads: [Tensor?] = [dx]
            if weight != nil { grads.append(Tensor(dw, shape: [C])) }
            if bias != nil { grads.append(Tensor(db, shape: [C])) }
            return grads
        }
    }
}
