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
        precondition(weight.rank == 2 && weight.shape[1] == shape[rank - 1], "linear: input \(shape), weight \(weight.shape)")
        let inF = weight.shape[1], outF = weight.shape[0]
        if let bias { precondition(bias.shape == [outF], "linear: bias \(bias.shape) for \(outF) outputs") }
        let x = contiguous(), w = weight.contiguous()
        let rows = count / inF
        let out = Tensor(uninitialized: Array(shape.dropLast()) + [outF])
        let bc = bias?.contiguous()
        BLAS.sgemm(transB: true, m: rows, n: outF, k: inF, a: x.pointer, lda: inF, b: w.pointer, ldb: inF,
                   c: out.pointer, ldc: outF, bias: bc.map { UnsafePointer($0.pointer) })
        withExtendedLifetime(bc) {}
        let inputs = bias.map { [self, weight, $0] } ?? [self, weight]
        return Tensor.record("linear", out, inputs) { g in
            let gc = g.contiguous()
            var grads: [Tensor?] = [nil, nil]
            if self.requiresGrad {
                let dx = Tensor(uninitialized: x.shape)
                BLAS.sgemm(m: rows, n: inF, k: outF, a: gc.pointer, lda: outF, b: w.pointer, ldb: inF, c: dx.pointer, ldc: inF)
                grads[0] = dx
            }
            if weight.requiresGrad {
                let dw = Tensor(uninitialized: [outF, inF])
                BLAS.sgemm(transA: true, m: outF, n: inF, k: rows, a: gc.pointer, lda: outF, b: x.pointer, ldb: inF, c: dw.pointer, ldc: inF)
                grads[1] = dw
            }
            if let bias {
                grads.append(bias.requiresGrad ? gc.reshapeRaw([rows, outF]).sumRaw(axes: [0]).reshapeRaw([outF]) : nil)
            }
            return grads
        }
    }
}
