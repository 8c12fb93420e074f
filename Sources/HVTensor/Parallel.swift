import CHVKernels
import Dispatch
import Foundation

/// Splits memory-bound elementwise work (copies, broadcasts, activations, norms, reductions)
/// over the cores. The GEMMs and attention were already threaded; these ops ran on the calling
/// thread alone and left the other core idle for about a third of a training step.
public enum Parallel {
    /// Threads for elementwise work (set with BLAS and attention threads; 1 = serial).
    nonisolated(unsafe) public static var threads = ProcessInfo.processInfo.activeProcessorCount
    /// Elements per thread below which an op stays on the calling thread (a dispatch costs
    /// microseconds; 32K floats take about as long to copy).
    nonisolated(unsafe) public static var grain = 1 << 15

    /// Calls `body` on disjoint ranges covering 0..<n, on up to `threads` threads when each gets
    /// at least `grain` units. Runs serially inside another parallel region (no nesting).
    @inline(__always)
    public static func chunks(_ n: Int, grain: Int = Parallel.grain, _ body: (Range<Int>) -> Void) {
        let parts = Swift.min(threads, n / Swift.max(grain, 1))
        if parts <= 1 || hv_parallel_depth() > 0 { body(0..<n); return }
        run(threads: parts) { p, parts in body(n * p / parts ..< n * (p + 1) / parts) }
    }

    /// Calls `body(t, count)` for t in 0..<count on `count` threads of hv's persistent pool (the
    /// GEMMs' threads, which spin briefly between calls, so back-to-back regions start without a
    /// futex wake); count <= `threads`, and 1 (on the calling thread) inside another parallel
    /// region or while another thread's call holds the pool.
    public static func run(threads: Int, _ body: (Int, Int) -> Void) {
        let granted = Int(hv_pool_acquire(Int32(clamping: threads)))
        if granted <= 1 { body(0, 1); return }
        defer { hv_pool_release(Int32(granted)) }
        withoutActuallyEscaping(body) { body in
            var job = PoolJob(count: granted, body: body)
            withUnsafeMutablePointer(to: &job) { p in
                hv_pool_run(Int32(granted), { arg, t in
                    hv_parallel_enter()
                    defer { hv_parallel_exit() }
                    let job = arg!.assumingMemoryBound(to: PoolJob.self)
                    job.pointee.body(Int(t), job.pointee.count)
                }, p)
            }
        }
    }

    /// Rows `rows` of a strided layout of `shape` (all axes but the last form the rows): calls
    /// `body(row, offsets)` for each row in order, with each operand's offset of that row's
    /// first element under its own `strides` (0 on broadcast axes).
    @inline(__always)
    static func forEachRow(_ shape: [Int], _ strides: [[Int]], _ rows: Range<Int>, _ body: (Int, UnsafeMutablePointer<Int>) -> Void) {
        let rank = shape.count, ops = strides.count
        var index = [Int](repeating: 0, count: Swift.max(rank - 1, 0))
        var offsets = [Int](repeating: 0, count: ops)
        var r = rows.lowerBound
        var d = rank - 2
        while d >= 0 {
            index[d] = r % shape[d]
            r /= shape[d]
            for o in 0..<ops { offsets[o] += index[d] * strides[o][d] }
            d -= 1
        }
        offsets.withUnsafeMutableBufferPointer { off in
            let p = off.baseAddress!
            for row in rows {
                body(row, p)
                var k = rank - 2
                while k >= 0 {
                    index[k] += 1
                    for o in 0..<ops { p[o] += strides[o][k] }
                    if index[k] < shape[k] { break }
                    for o in 0..<ops { p[o] -= strides[o][k] * shape[k] }
                    index[k] = 0
                    k -= 1
                }
            }
        }
    }
}

/// A value handed to the threads of one parallel region, which use it only during the region.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// One region of `Parallel.run`, handed to the pool's threads by pointer.
private struct PoolJob {
    let count: Int
    let body: (Int, Int) -> Void
}
