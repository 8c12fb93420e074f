/// Row-major strides of a contiguous tensor of `shape`.
@inlinable public func contiguousStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var acc = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        strides[i] = acc
        acc *= shape[i]
    }
    return strides
}

@inlinable public func shapeCount(_ shape: [Int]) -> Int { shape.reduce(1, *) }

/// The element count of `shape` from untrusted input (a file, an option): nil when a size is
/// negative or the product overflows.
public func checkedShapeCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, overflow) = n.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        n = p
    }
    return n
}

/// NumPy broadcasting of two shapes; nil when they are incompatible.
public func broadcastShapes(_ a: [Int], _ b: [Int]) -> [Int]? {
    let n = max(a.count, b.count)
    var out = [Int](repeating: 1, count: n)
    for i in 0..<n {
        let da = i < n - a.count ? 1 : a[i - (n - a.count)]
        let db = i < n - b.count ? 1 : b[i - (n - b.count)]
        if da == db || db == 1 { out[i] = da } else if da == 1 { out[i] = db } else { return nil }
    }
    return out
}

/// Normalises a possibly negative axis against `rank`.
@inlinable public func normalizeAxis(_ axis: Int, rank: Int) -> Int {
    let a = axis < 0 ? axis + rank : axis
    precondition(a >= 0 && a < rank, "axis \(axis) out of range for rank \(rank)")
    return a
}
