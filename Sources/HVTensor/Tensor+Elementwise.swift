import CHVKernels
import Foundation

enum BinaryOp { case add, sub, mul, div }

/// out = a (op) b with NumPy broadcasting; no graph.
func broadcastBinary(_ a: Tensor, _ b: Tensor, _ op: BinaryOp) -> Tensor {
    guard let outShape = broadcastShapes(a.shape, b.shape) else {
        preconditionFailure("shapes \(a.shape) and \(b.shape) do not broadcast")
    }
    let out = Tensor(uninitialized: outShape)
    let n = out.count
    if n == 0 { return out }
    let o = out.pointer
    let rank = outShape.count
    // Strides of a and b expressed in the output's index space (0 on broadcast axes).
    func expanded(_ t: Tensor) -> [Int] {
        var s = [Int](repeating: 0, count: rank)
        let lead = rank - t.rank
        for i in 0..<t.rank where t.shape[i] != 1 { s[lead + i] = t.strides[i] }
        return s
    }
    let sa = rank == 0 ? [] : expanded(a), sb = rank == 0 ? [] : expanded(b)
    let pa = a.pointer, pb = b.pointer
    if rank == 0 {
        o[0] = apply(op, pa[0], pb[0]); return out
    }
    let inner = outShape[rank - 1]
    let ia = sa[rank - 1], ib = sb[rank - 1]
    Parallel.chunks(n / inner, grain: Swift.max(1, Parallel.grain / inner)) { rows in
        Parallel.forEachRow(outShape, [sa, sb], rows) { row, off in
            innerLoop(op, o + row * inner, pa + off[0], ia, pb + off[1], ib, inner)
        }
    }
    return out
}

@inline(__always) private func apply(_ op: BinaryOp, _ x: Float, _ y: Float) -> Float {
    switch op { case .add: x + y; case .sub: x - y; case .mul: x * y; case .div: x / y }
}

@inline(__always)
private func innerLoop(_ op: BinaryOp, _ o: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ sa: Int,
                       _ b: UnsafePointer<Float>, _ sb: Int, _ n: Int) {
    switch (sa, sb) {
    case (1, 1):
        switch op {
        case .add: for i in 0..<n { o[i] = a[i] + b[i] }
        case .sub: for i in 0..<n { o[i] = a[i] - b[i] }
        case .mul: for i in 0..<n { o[i] = a[i] * b[i] }
        case .div: for i in 0..<n { o[i] = a[i] / b[i] }
        }
    case (1, 0):
        let y = b[0]
        switch op {
        case .add: for i in 0..<n { o[i] = a[i] + y }
        case .sub: for i in 0..<n { o[i] = a[i] - y }
        case .mul: for i in 0..<n { o[i] = a[i] * y }
        case .div: for i in 0..<n { o[i] = a[i] / y }
        }
    case (0, 1):
        let x = a[0]
        switch op {
        case .add: for i in 0..<n { o[i] = x + b[i] }
        case .sub: for i in 0..<n { o[i] = x - b[i] }
        case .mul: for i in 0..<n { o[i] = x * b[i] }
        case .div: for i in 0..<n { o[i] = x / b[i] }
        }
    default:
        for i in 0..<n { o[i] = apply(op, a[i * sa], b[i * sb]) }
    }
}

extension Tensor {
    /// Sums a broadcast gradient back down to `target` shape.
    public func sumTo(_ target: [Int]) -> Tensor {
        if shape == target { return self }
        let lead = rank - target.count
        var axes: [Int] = Array(0..<lead)
        for i in 0..<target.count where target[i] == 1 && shape[lead + i] != 1 { axes.append(lead + i) }
        return sumRaw(axes: axes).reshapeRaw(target)
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastBinary(a, b, .add)
        return record("add", out, [a, b]) { g in [g.sumTo(a.shape), g.sumTo(b.shape)] }
    }

    public static func - (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastBinary(a, b, .sub)
        return record("sub", out, [a, b]) { g in [g.sumTo(a.shape), g.neg().sumTo(b.shape)] }
    }

    public static func * (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastBinary(a, b, .mul)
        return record("mul", out, [a, b]) { g in
            [a.requiresGrad ? (g * b).sumTo(a.shape) : nil, b.requiresGrad ? (g * a).sumTo(b.shape) : nil]
        }
    }

    public static func / (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastBinary(a, b, .div)
        return record("div", out, [a, b]) { g in
            [a.requiresGrad ? (g / b).sumTo(a.shape) : nil,
             b.requiresGrad ? (g * out / b).neg().sumTo(b.shape) : nil]
        }
    }

    public static func + (a: Tensor, s: Float) -> Tensor { a.map("addScalar", { $0 + s }, grad: { g, _, _ in g }) }
    public static func - (a: Tensor, s: Float) -> Tensor { a + (-s) }
    public static func * (a: Tensor, s: Float) -> Tensor { a.map("mulScalar", { $0 * s }, grad: { g, _, _ in g * s }) }
    public static func / (a: Tensor, s: Float) -> Tensor { a * (1 / s) }
    public static func + (s: Float, a: Tensor) -> Tensor { a + s }
    public static func * (s: Float, a: Tensor) -> Tensor { a * s }
    public static func - (s: Float, a: Tensor) -> Tensor { a.neg() + s }
    public static prefix func - (a: Tensor) -> Tensor { a.neg() }

    /// Elementwise map with a gradient rule `grad(g, x, y)`; `f` must be pure.
    @inline(__always)
    func map(_ name: String, _ f: (Float) -> Float, grad: @escaping (Tensor, Tensor, Tensor) -> Tensor) -> Tensor {
        let x = contiguous()
        let out = Tensor(uninitialized: shape)
        let p = x.pointer, o = out.pointer
        Parallel.chunks(count) { r in for i in r { o[i] = f(p[i]) } }
        return Tensor.record(name, out, [self]) { g in [grad(g, x, out)] }
    }

    /// Elementwise combination of two same-shape tensors outside the graph (for backward rules).
    @inline(__always)
    static func zipMap(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        precondition(a.shape == b.shape, "zipMap \(a.shape) vs \(b.shape)")
        let x = a.contiguous(), y = b.contiguous()
        let out = Tensor(uninitialized: a.shape)
        let p = x.pointer, q = y.pointer, o = out.pointer
        Parallel.chunks(a.count) { r in for i in r { o[i] = f(p[i], q[i]) } }
        return out
    }

    /// self + y * gate, with self and y [B, L, H] and gate [B, H] broadcast over L (a gated
    /// residual). With nothing to record, one pass into one new tensor, where the two ops take two
    /// passes and an intermediate; the same arithmetic (a product, then a sum).
    public func addingGated(_ y: Tensor, gate: Tensor) -> Tensor {
        guard !Tensor.willRecord([self, y, gate]), rank == 3, y.shape == shape, gate.shape == [shape[0], shape[2]] else {
            return self + y * gate.unsqueeze(1)
        }
        let x = contiguous(), yc = y.contiguous(), g = gate.contiguous()
        let L = shape[1], H = shape[2]
        let out = Tensor(uninitialized: shape)
        let xp = UncheckedSendable(x.pointer), yp = UncheckedSendable(yc.pointer), gp = UncheckedSendable(g.pointer)
        let op = UncheckedSendable(out.pointer)
        Parallel.chunks(shape[0] * L, grain: Swift.max(1, Parallel.grain / Swift.max(1, H))) { rows in
            for r in rows {
                let a = xp.value + r * H, b = yp.value + r * H, c = gp.value + (r / L) * H, o = op.value + r * H
                for i in 0..<H { o[i] = a[i] + b[i] * c[i] }
            }
        }
        withExtendedLifetime((x, yc, g)) {}
        return out
    }

    public func neg() -> Tensor { map("neg", { -$0 }, grad: { g, _, _ in g.neg() }) }
    public func exp() -> Tensor { map("exp", { Foundation.exp($0) }, grad: { g, _, y in g * y }) }
    public func log() -> Tensor { map("log", { Foundation.log($0) }, grad: { g, x, _ in g / x }) }
    public func sqrt() -> Tensor { map("sqrt", { $0.squareRoot() }, grad: { g, _, y in Tensor.zipMap(g, y) { $0 * 0.5 / $1 } }) }
    public func square() -> Tensor { map("square", { $0 * $0 }, grad: { g, x, _ in Tensor.zipMap(g, x) { 2 * $0 * $1 } }) }
    public func tanh() -> Tensor { map("tanh", { Foundation.tanh($0) }, grad: { g, _, y in Tensor.zipMap(g, y) { $0 * (1 - $1 * $1) } }) }
    public func sigmoid() -> Tensor {
        map("sigmoid", { 1 / (1 + Foundation.exp(-$0)) }, grad: { g, _, y in Tensor.zipMap(g, y) { $0 * $1 * (1 - $1) } })
    }

    /// x * sigmoid(x) (vectorised C kernel).
    public func silu() -> Tensor { activation("silu", hv_silu_forward, hv_silu_backward) }

    /// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (vectorised C kernel).
    public func gelu() -> Tensor { activation("gelu", hv_gelu_forward, hv_gelu_backward) }

    /// A C activation kernel applied row by row, split over the cores. A view whose last axis is
    /// contiguous (a slice of a fused projection) is read in place, not copied first.
    private func activation(_ name: String, _ forward: @escaping @convention(c) (UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int) -> Void,
                            _ backward: @escaping @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int) -> Void) -> Tensor {
        // In place only outside a graph: the backward pass keeps x, and a view would keep the
        // whole fused projection alive instead of the slice.
        let inPlace = isContiguous || (rank > 0 && strides[rank - 1] == 1 && !Tensor.willRecord([self]))
        let x = inPlace ? self : contiguous()
        let out = Tensor(uninitialized: shape)
        let n = count
        if n == 0 { return Tensor.record(name, out, [self]) { g in [Tensor(zeros: g.shape)] } }
        let inner = rank > 0 ? shape[rank - 1] : 1, xp = x.pointer, op = out.pointer
        let xStrides = x.strides, shape = shape
        func rows(_ body: @escaping (Range<Int>, UnsafeMutablePointer<Int>) -> Void) {
            if x.isContiguous {
                Parallel.chunks(n) { r in var zero = 0; body(r, &zero) }
                return
            }
            Parallel.chunks(n / inner, grain: Swift.max(1, Parallel.grain / inner)) { part in
                Parallel.forEachRow(shape, [xStrides], part) { row, off in body(row * inner ..< (row + 1) * inner, off) }
            }
        }
        // r: a range of output (contiguous) positions; off[0]: for strided x, x's offset of the
        // row's first element (r is one row); unused for contiguous x, addressed like the output.
        let contiguousX = x.isContiguous
        rows { r, off in
            let xs = contiguousX ? xp + r.lowerBound : xp + off[0]
            forward(xs, op + r.lowerBound, r.count)
        }
        return Tensor.record(name, out, [self]) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: shape)
            let gp = gc.pointer, dp = dx.pointer, xp = x.pointer
            rows { r, off in
                let xs = contiguousX ? xp + r.lowerBound : xp + off[0]
                backward(xs, gp + r.lowerBound, dp + r.lowerBound, r.count)
            }
            withExtendedLifetime((x, gc)) {}
            return [dx]
        }
    }

    public func relu() -> Tensor { map("relu", { max($0, 0) }, grad: { g, x, _ in Tensor.zipMap(g, x) { $1 > 0 ? $0 : 0 } }) }
}

extension Tensor {
    /// Elementwise clamp; the gradient passes where min < x < max.
    public func clamp(min lo: Float, max hi: Float) -> Tensor {
        let x = contiguous()
        let out = Tensor(uninitialized: shape)
        for i in 0..<count { out.pointer[i] = Swift.min(Swift.max(x.pointer[i], lo), hi) }
        return Tensor.record("clamp", out, [self]) { g in
            let gc = g.contiguous()
            let dx = Tensor(uninitialized: x.shape)
            for i in 0..<x.count { let v = x.pointer[i]; dx.pointer[i] = v > lo && v < hi ? gc.pointer[i] : 0 }
            return [dx]
        }
    }
}
