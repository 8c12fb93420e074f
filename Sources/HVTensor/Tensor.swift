import Foundation

/// An fp32 n-dimensional array with reverse-mode autodiff.
///
/// Storage is shared between views (`reshape` of a contiguous tensor, `transpose`, `permute`,
/// `slice`); kernels call `contiguous()` first, which copies only when the layout is strided.
/// A tensor produced by an op while `GradMode.isEnabled` and with an input that requires grad
/// records a `GradNode`; `backward()` walks those nodes in reverse topological order.
public final class Tensor: @unchecked Sendable, CustomStringConvertible {
    public let shape: [Int]
    public let strides: [Int]
    /// Changes only through `bind`/`release` (ZeRO-3 parameter sharding).
    public private(set) var offset: Int
    /// Replaceable only through `materialize`/`bind`/`release` (ZeRO-3 parameter sharding).
    public private(set) var storage: Storage

    /// Leaves with `requiresGrad` accumulate into `grad` on every `backward()` (gradient accumulation).
    public var requiresGrad: Bool
    public var grad: Tensor?
    /// Dotted path of a parameter (e.g. `double_blocks.0.img_attn_qkv.weight`); nil for activations.
    public var name: String?
    public internal(set) var gradNode: GradNode?
    /// See `setGradReadyHook`.
    public internal(set) var gradReadyHook: ((Tensor) -> Void)?

    public init(storage: Storage, shape: [Int], strides: [Int]? = nil, offset: Int = 0, requiresGrad: Bool = false) {
        self.storage = storage
        self.shape = shape
        self.strides = strides ?? contiguousStrides(shape)
        self.offset = offset
        self.requiresGrad = requiresGrad
    }

    /// A contiguous tensor of uninitialised values: every element must be written.
    public convenience init(uninitialized shape: [Int]) {
        self.init(storage: Storage(uninitialized: shapeCount(shape)), shape: shape)
    }

    public convenience init(zeros shape: [Int], requiresGrad: Bool = false) {
        self.init(storage: Storage(zeros: shapeCount(shape)), shape: shape, requiresGrad: requiresGrad)
    }

    public convenience init(repeating value: Float, shape: [Int]) {
        self.init(uninitialized: shape)
        storage.pointer.update(repeating: value, count: count)
    }

    public convenience init(_ values: [Float], shape: [Int], requiresGrad: Bool = false) {
        precondition(values.count == shapeCount(shape), "\(values.count) values for shape \(shape)")
        self.init(uninitialized: shape)
        values.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: values.count) }
        self.requiresGrad = requiresGrad
    }

    public convenience init(scalar: Float) { self.init([scalar], shape: []) }

    public var rank: Int { shape.count }
    public var count: Int { shapeCount(shape) }
    public var isContiguous: Bool { strides == contiguousStrides(shape) }
    /// Base pointer of element [0, 0, ...]; valid while the tensor is alive.
    public var pointer: UnsafeMutablePointer<Float> { storage.pointer + offset }

    public func size(_ axis: Int) -> Int { shape[normalizeAxis(axis, rank: rank)] }

    /// Values in row-major order (copies).
    public var scalars: [Float] {
        let c = contiguous()
        return Array(UnsafeBufferPointer(start: c.pointer, count: c.count))
    }

    public var item: Float {
        precondition(count == 1, "item on a tensor of shape \(shape)")
        return contiguous().pointer[0]
    }

    public var description: String {
        let v = scalars
        let shown = v.prefix(8).map { String(format: "%.5g", $0) }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(shown)\(v.count > 8 ? ", ..." : "")])"
    }

    /// Same storage, no graph history.
    public func detached() -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset)
    }

    /// True when this contiguous tensor covers all of its storage and no other tensor shares
    /// that storage.
    func ownsWholeStorage() -> Bool {
        offset == 0 && storage.count == count && isContiguous && isKnownUniquelyReferenced(&storage)
    }

    /// A new contiguous copy (no graph history).
    public func copy() -> Tensor {
        let out = Tensor(uninitialized: shape)
        copyStrided(from: self, to: out.pointer)
        return out
    }

    /// Writes `other`'s values into this tensor's storage in place (no graph; used by optimizers).
    public func assign(_ other: Tensor) {
        precondition(other.shape == shape, "assign \(other.shape) into \(shape)")
        precondition(isContiguous, "assign into a strided view")
        copyStrided(from: other, to: pointer)
    }

    /// `self += other` in place, outside the graph.
    public func addInPlace(_ other: Tensor, scale: Float = 1) {
        precondition(other.shape == shape && isContiguous, "addInPlace \(other.shape) into \(shape)")
        let o = other.contiguous()
        let p = pointer, q = o.pointer
        Parallel.chunks(count) { r in for i in r { p[i] += scale * q[i] } }
        withExtendedLifetime(o) {}
    }

    /// ZeRO-3: gives a released parameter fresh full-size storage (contents to be written).
    public func materialize() {
        if storage.count < count + offset { storage = Storage(uninitialized: count); offset = 0 }
    }

    /// ZeRO-3: makes this parameter a view of `count` values at `offset` in `storage` (a whole
    /// unit's gathered flat buffer), so a unit is gathered in place without a second copy.
    public func bind(to storage: Storage, offset: Int) {
        precondition(isContiguous && isLeaf, "bind(to:offset:) is for parameters only")
        precondition(offset >= 0 && offset + count <= storage.count, "bind: \(count) values at \(offset) outside \(storage.count)")
        self.storage = storage
        self.offset = offset
    }

    /// ZeRO-3: drops this parameter's storage until the next `materialize`/`bind`. Only for
    /// contiguous leaves (parameters); views of it must not outlive the release.
    public func release() {
        precondition(isContiguous && isLeaf, "release() is for parameters only")
        storage = Storage(uninitialized: 0)
        offset = 0
    }

    public var isMaterialized: Bool { storage.count >= count }

    public func fill(_ value: Float) {
        precondition(isContiguous)
        pointer.update(repeating: value, count: count)
    }
}

/// Copies a (possibly strided) tensor's elements into contiguous memory at `dst`.
func copyStrided(from t: Tensor, to dst: UnsafeMutablePointer<Float>) {
    let n = t.count
    if n == 0 { return }
    let src = t.pointer
    if t.isContiguous {
        Parallel.chunks(n) { r in (dst + r.lowerBound).update(from: src + r.lowerBound, count: r.count) }
        return
    }
    let rank = t.rank
    let shape = t.shape, strides = t.strides
    let inner = shape[rank - 1], innerStride = strides[rank - 1]
    let sendable = UncheckedSendable(dst)
    Parallel.chunks(n / inner, grain: Swift.max(1, Parallel.grain / inner)) { rows in
        let dst = sendable.value
        Parallel.forEachRow(shape, [strides], rows) { row, off in
            let o = row * inner, s = src + off[0]
            if innerStride == 1 {
                (dst + o).update(from: s, count: inner)
            } else {
                for i in 0..<inner { dst[o + i] = s[i * innerStride] }
            }
        }
    }
}
