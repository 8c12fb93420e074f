import Foundation

/// Owned, 64-byte aligned fp32 buffer. Tensors share a `Storage` when they are views of each other.
public final class Storage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    /// Uninitialised storage of `count` floats (callers must write every element).
    public init(uninitialized count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    /// Zeroed storage mapped straight from the kernel (mmap), unmapped when freed: for large
    /// short-lived buffers (ZeRO-3's gathered units) that must not fragment the heap.
    public init(mappedZeros count: Int) {
        self.count = count
        let bytes = max(count, 1) * 4
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
            fatalError("mmap of \(bytes) bytes failed: \(String(cString: strerror(errno)))")
        }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        mappedBytes = bytes
    }

    private var mappedBytes = 0

    public convenience init(zeros count: Int) {
        self.init(uninitialized: count)
        let p = UncheckedSendable(pointer)
        Parallel.chunks(count) { r in (p.value + r.lowerBound).initialize(repeating: 0, count: r.count) }
    }

    deinit {
        if mappedBytes > 0 { munmap(UnsafeMutableRawPointer(pointer), mappedBytes) } else { UnsafeMutableRawPointer(pointer).deallocate() }
    }
}
