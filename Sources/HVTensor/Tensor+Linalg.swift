/// Matrix products through cblas_sgemm.
extension Tensor {
    /// a [..., M, K] x b [K, N] -> [..., M, N]; or batched a [B..., M, K] x b [B..., K, N].
    public func matmul(_ other: Tensor) -> Tensor {
        precondition(rank >= 2 && other.rank >= 2, "matmul needs rank >= 2: \(shape) x \(other.shape)")
        let M = shape[rank - 2], K = shape[rank - 1]
        precondition(other.shape[other.rank - 2] == K, "matmul inner dims: \(shape) x \(other.shape)")
        let N = other.shape[other.rank - 1]
        let a = contiguous(), b = other.contiguous()
        if other.rank == 2 {
            let rows = count / K
            let out = Tensor(uninitialized: Array(shape.dropLast()) + [N])
            BLAS.sgemm(m: rows, n: N, k: K, a: a.pointer, lda: K, b: b.pointer, ldb: N, c: out.pointer, ldc: N)
            return Tensor.record("matmul", out, [self, other]) { g in
                let gc = g.contiguous()
                var da: Tensor? = nil, db: Tensor? = nil
                if self.requiresGrad {
                    let t = Tensor(uninitialized: a.shape)
                    BLAS.sgemm(transB: true, m: rows, n: K, k: N, a: gc.pointer, lda: N, b: b.pointer, ldb: N, c: t.pointer, ldc: K)
                    da = t
                }
                if other.requiresGrad {
                    let t = Tensor(uninitialized: [K, N])
                    BLAS.sgemm(transA: true, m: K, n: N, k: rows, a: a.pointer, lda: K, b: gc.pointer, ldb: N, c: t.pointer, ldc: N)
                    db = t
                }
                return [da, db]
            }
        }
        let batchShape = Array(shape.dropLast(2))
        precondition(Array(other.shape.dropLast(2)) == batchShape, "batched matmul needs equal batch dims: \(shape) x \(other.shape)")
        let batch = shapeCount(batchShape)
        let out = Tensor(uninitialized: batchShape + [M, N])
        for i in 0..<batch {
            BLAS.sgemm(m: M, n: N, k: K, a: a.pointer + i * M * K, lda: K, b: b.pointer + i * K * N, ldb: N,
                       c: out.pointer + i * M * N, ldc: N)
        }
        return Tensor.record("bmm", out, [self, other]) { g in
            let gc = g.contiguous()
            var da: Tensor? = nil, db: Tensor? = nil
            if self.requiresGrad {
                let t = Tensor(uninitialized: a.shape)
                for i in 0..<batch {
                    BLAS.sgemm(transB: true, m: M, n: K, k: N, a: gc.pointer + i * M * N, lda: N, b: b.pointer + i * K * N, ldb: N,
                               c: t.pointer + i * M * K, ldc: K)
                }
                da = t
            }
            if other.requiresGrad {
                let t = Tensor(uninitialized: b.shape)
                for i in 0..<batch {
                    BLAS.sgemm(transA: true, m: K, n: N, k: M, a: a.pointer + i * M * K, lda: K, b: gc.pointer + i * M * N, ldb: N,
                               c: t.pointer + i * K * N, ldc: N)
                }
                db = t
            }
            return [da, db]
        }
    }

    /// torch.nn.functional.linear: x [..., in] · weight[out, in]^T + bias[out].
    public func linear(_ weight: Tensor, _ bias: Tensor? = nil) -> Tensor {
        Tensor.linear(parts: [self], weight, bias, geluFrom: nil)
    }

    /// GELU(x W^T + b) on output columns >= `column` (the rest as they are), in the same pass
    /// over the output as the product (hv's fp32 kernel applies it to each block of the output
    /// while the block is in cache): an MLP's first layer, or the MLP part of the single-stream
    /// block's fused linear1, when sampling. Outside a graph only.
    public func linearGELU(_ weight: Tensor, _ bias: Tensor? = nil, fromColumn column: Int = 0) -> Tensor {
        precondition(!Tensor.willRecord(bias.map { [self, weight, $0] } ?? [self, weight]), "linearGELU records no gradient; use linear(_:_:) and gelu()")
        return Tensor.linear(parts: [self], weight, bias, geluFrom: column)
    }

    /// The distance between consecutive rows (every axis but the last flattened) when the last
    /// axis is contiguous and the rows lie at one stride — a contiguous tensor, or a column slice
    /// of one — else nil.
    var rowStride: Int? {
        guard rank >= 1 else { return nil }
        let width = shape[rank - 1]
        guard width <= 1 || strides[rank - 1] == 1 else { return nil }
        var rowStride: Int? = nil, next = 0  // the stride the next outer axis must have
        for axis in stride(from: rank - 2, through: 0, by: -1) where shape[axis] > 1 {
            if let _ = rowStride {
                if strides[axis] != next { return nil }
            } else {
                guard strides[axis] >= width else { return nil }
                rowStride = strides[axis]
            }
            next = strides[axis] * shape[axis]
        }
        return rowStride ?? max(width, 1)
    }

    /// `Tensor.concat(parts, axis: -1).linear(weight, bias)` without forming the concatenation:
    /// each part is multiplied by its own columns of `weight` and the products are summed in the
    /// output (the single-stream block's linear2 over [attention ; GELU(mlp)]). The parts share
    /// all axes but the last.
    public static func linear(concatenating parts: [Tensor], _ weight: Tensor, _ bias: Tensor? = nil) -> Tensor {
        linear(parts: parts, weight, bias, geluFrom: nil)
    }

    /// `linear` over the concatenation of `parts` (one part: plain `linear`), then GELU on output
    /// columns >= geluFrom (applied with the last part's product, when the sum is complete).
    private static func linear(parts: [Tensor], _ weight: Tensor, _ bias: Tensor?, geluFrom: Int?) -> Tensor {
        precondition(!parts.isEmpty, "linear(concatenating:) needs at least one part")
        let lead = Array(parts[0].shape.dropLast())
        let widths = parts.map { $0.shape[$0.rank - 1] }
        let inF = widths.reduce(0, +), outF = weight.shape[0]
        precondition(weight.rank == 2 && weight.shape[1] == inF, "linear: input(s) of width \(widths), weight \(weight.shape)")
        precondition(parts.allSatisfy { Array($0.shape.dropLast()) == lead }, "linear: parts \(parts.map(\.shape)) differ before the last axis")
        if let bias { precondition(bias.shape == [outF], "linear: bias \(bias.shape) for \(outF) outputs") }
        // A part whose rows lie at one stride (a column slice of a fused projection) is read in place.
        let xs = parts.map { $0.rowStride != nil ? $0 : $0.contiguous() }, w = weight.contiguous(), bc = bias?.contiguous()
        let lds = xs.map { $0.rowStride! }
        let rows = lead.reduce(1, *)
        let columns = widths.indices.map { widths[..<$0].reduce(0, +) }  // first column of each part in weight
        let out = Tensor(uninitialized: lead + [outF])
        for (i, x) in xs.enumerated() {
            BLAS.sgemm(transB: true, m: rows, n: outF, k: widths[i], a: x.pointer, lda: lds[i], b: w.pointer + columns[i], ldb: inF,
                       beta: i == 0 ? 0 : 1, c: out.pointer, ldc: outF, bias: i == 0 ? bc.map { UnsafePointer($0.pointer) } : nil,
                       geluFrom: i == xs.count - 1 ? geluFrom : nil)
        }
        withExtendedLifetime(bc) {}
        let inputs = parts + [weight] + (bias.map { [$0] } ?? [])
        return Tensor.record("linear", out, inputs) { g in
            let gc = g.contiguous()
            var grads: [Tensor?] = []
            for (i, part) in parts.enumerated() {
                guard part.requiresGrad else { grads.append(nil); continue }
                let dx = Tensor(uninitialized: part.shape)
                BLAS.sgemm(m: rows, n: widths[i], k: outF, a: gc.pointer, lda: outF, b: w.pointer + columns[i], ldb: inF,
                           c: dx.pointer, ldc: widths[i])
                grads.append(dx)
            }
            if weight.requiresGrad {
                let dw = Tensor(uninitialized: [outF, inF])
                for (i, x) in xs.enumerated() {
                    BLAS.sgemm(transA: true, m: outF, n: widths[i], k: rows, a: gc.pointer, lda: outF, b: x.pointer, ldb: lds[i],
                               c: dw.pointer + columns[i], ldc: inF)
                }
                grads.append(dw)
            } else {
                grads.append(nil)
            }
            if let bias {
                grads.append(bias.requiresGrad ? gc.reshapeRaw([rows, outF]).sumRaw(axes: [0]).reshapeRaw([outF]) : nil)
            }
            return grads
        }
    }
}
