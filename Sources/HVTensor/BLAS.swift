import CHVBLAS
import CHVKernels
import Foundation
import Synchronization

/// Process-wide setup for hv's executables.
public enum HVRuntime {
    /// Keeps large tensor buffers in the heap for reuse (glibc would otherwise mmap and
    /// zero-fill each one: measured at ~14% of a training step's cycles in `clear_page`).
    public static func configureProcess() { hv_tune_malloc() }
    /// Hands the heap's free pages back to the kernel (after ZeRO-3 drops the full model).
    public static func trimHeap() { _ = hv_malloc_trim() }
    /// glibc's view of the heap: bytes taken from the kernel by the arenas (resident once
    /// touched, whether live or free), bytes of them in live blocks, and bytes in mmap-ed blocks.
    public static func heapStats() -> (arena: Int, inUse: Int, mmapped: Int) {
        var a = 0, u = 0, m = 0
        hv_heap_stats(&a, &u, &m)
        return (a, u, m)
    }
    /// Large blocks mmap-ed and returned when freed (ZeRO-3 workers; see hv_tune_malloc_resident).
    public static func preferResidentMemory() { hv_tune_malloc_resident() }
    /// Runs `body` with `preferResidentMemory`'s settings, then restores the previous ones: for
    /// a phase whose peak must stay bounded (a tiled VAE decode), where the page faults of
    /// fresh mmap-ed blocks cost far less than the heap's high-water across differently sized
    /// activations. Not for concurrent use from several threads.
    public static func withResidentMemory<R>(_ body: () throws -> R) rethrows -> R {
        let saved = mallocThresholds
        hv_tune_malloc_resident()
        defer { hv_malloc_set_thresholds(saved.mmap, saved.trim) }
        return try body()
    }
    /// glibc's mmap and trim thresholds in bytes, as last set by hv (not by the environment).
    public static var mallocThresholds: (mmap: Int, trim: Int) {
        var m = 0, t = 0
        hv_malloc_thresholds(&m, &t)
        return (m, t)
    }
}

/// What the matrix products compute in: fp32 throughout (the default), or bf16 operands with fp32
/// sums — the mixed precision of bf16 training and of PyTorch's CPU autocast: weights, gradients,
/// optimizer state and every non-GEMM op stay fp32; each GEMM rounds its two operands to bf16
/// (nearest even) while packing them and accumulates in fp32 (`hv_gemm_bf16`, AVX512-BF16).
public enum MatmulPrecision: String, Sendable, CaseIterable {
    case fp32, bf16

    /// Process-wide; set once at start (run config `train.precision`, `--precision` flags).
    nonisolated(unsafe) public static var current: MatmulPrecision = .fp32
    /// Smaller products stay in fp32 sgemm (packing would dominate).
    nonisolated(unsafe) public static var minimumMACs = 32_768

    /// Whether this CPU runs the bf16 kernel (vdpbf16ps).
    public static var bf16Available: Bool { hv_bf16_gemm_available() != 0 }

    /// Selects `precision`; bf16 on a CPU without AVX512-BF16 is an error naming the CPU flag.
    public static func select(_ precision: MatmulPrecision) throws {
        if precision == .bf16 && !bf16Available {
            throw MatmulPrecisionError.unsupported
        }
        current = precision
    }
}

public enum MatmulPrecisionError: Error, CustomStringConvertible {
    case unsupported
    public var description: String {
        "precision bf16 needs a CPU with AVX512-BF16 (flag avx512_bf16 in /proc/cpuinfo); this one has none: use precision fp32"
    }
}

/// Thin funnel over the matrix products: hv's fp32 kernel (`hv_gemm_f32`, AVX2 + FMA) or
/// OpenBLAS's cblas_sgemm (row-major), or the bf16 kernel when selected.
public enum BLAS {
    /// Which fp32 GEMM runs: hv's own kernel (the default on CPUs with AVX2 and FMA) or
    /// OpenBLAS's sgemm. `HV_GEMM=openblas` (or `hv`) in the environment overrides the choice,
    /// for A/B timings.
    public enum Kernel: String, Sendable { case hv, openblas }
    nonisolated(unsafe) public static var kernel: Kernel = defaultKernel
    /// hv's kernel on CPUs with AVX2 and FMA unless `HV_GEMM` says otherwise.
    public static var defaultKernel: Kernel {
        if let forced = ProcessInfo.processInfo.environment["HV_GEMM"].flatMap(Kernel.init(rawValue:)),
           forced == .openblas || hv_f32_gemm_available() != 0 {
            return forced
        }
        return hv_f32_gemm_available() != 0 ? .hv : .openblas
    }

    /// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C (+ bias[n] when given, added once per
    /// row), row-major with leading dimensions; then GELU (tanh) on columns >= geluFrom.
    @inline(__always)
    public static func sgemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, bias: UnsafePointer<Float>? = nil, geluFrom: Int? = nil
    ) {
        if m == 0 || n == 0 { return }
        // Columns >= geluFrom go through GELU (tanh): inside hv's fp32 kernel, else afterwards.
        let gelu = min(max(geluFrom ?? n, 0), n)
        var geluDone = gelu == n
        defer { if !geluDone { for i in 0..<m { hv_gelu_inplace(c + i * ldc + gelu, n - gelu) } } }
        // A(i, l) and B(l, j) as strides, for hv's kernels.
        let rsa = transA ? 1 : lda, csa = transA ? lda : 1, rsb = transB ? 1 : ldb, csb = transB ? ldb : 1
        let threads = openblas_get_num_threads()
        var beta = beta
        if k > 0, beta == 0 || beta == 1 {
            if MatmulPrecision.current == .bf16, m * n * k >= MatmulPrecision.minimumMACs {
                // The kernel splits over OpenBLAS's thread count, so callers that run OpenBLAS
                // on one thread per worker (attention) keep that.
                if let bias { beta = addBias(bias, to: c, m: m, n: n, ldc: ldc, beta: beta) }
                hv_gemm_bf16(Int32(m), Int32(n), Int32(k), alpha, a, rsa, csa, b, rsb, csb, c, ldc, beta == 1 ? 1 : 0, threads)
                return
            }
            if kernel == .hv {
                let t0 = shapeLog != nil ? DispatchTime.now().uptimeNanoseconds : 0
                defer { shapeLog?.record(m: m, n: n, k: k, transA: transA, transB: transB, since: t0) }
                hv_gemm_f32(Int32(m), Int32(n), Int32(k), alpha, a, rsa, csa, b, rsb, csb, c, ldc, beta == 1 ? 1 : 0, bias, Int32(gelu), threads)
                geluDone = true
                return
            }
        }
        if let bias { beta = addBias(bias, to: c, m: m, n: n, ldc: ldc, beta: beta) }
        if k == 0 {
            if beta == 0 { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
            else if beta != 1 { for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } } }
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C = bias in every row (+ beta C), for the kernels that cannot add the bias themselves;
    /// returns the beta that accumulates the product into it (1).
    private static func addBias(_ bias: UnsafePointer<Float>, to c: UnsafeMutablePointer<Float>, m: Int, n: Int, ldc: Int, beta: Float) -> Float {
        for i in 0..<m {
            let row = c + i * ldc
            if beta == 0 { row.update(from: bias, count: n) } else { for j in 0..<n { row[j] = beta * row[j] + bias[j] } }
        }
        return 1
    }

    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(clamping: max(1, newValue))) }
    }

    /// The kernel family OpenBLAS chose at load (e.g. "Haswell", "SkylakeX", "Zen").
    public static var coreName: String { String(cString: openblas_get_corename()) }
    public static var config: String { String(cString: openblas_get_config()) }
}

/// OpenBLAS picks its kernels once, at library load, from `OPENBLAS_CORETYPE` if set. Some
/// environments force a weaker core type (e.g. Haswell/AVX2 on an AVX-512 CPU, ~half speed).
/// The CLIs call `reexecIfNeeded()` first: when the forced type is weaker than what the CPU
/// supports, they re-exec themselves once with the variable removed. `HV_KEEP_OPENBLAS_CORETYPE=1`
/// keeps the user's setting; `HV_OPENBLAS_REEXEC` marks the second exec (OpenBLAS itself
/// writes the variable at load, so its presence alone cannot tell).
public enum BLASEnvironment {
    public static let keepVariable = "HV_KEEP_OPENBLAS_CORETYPE"
    public static let markerVariable = "HV_OPENBLAS_REEXEC"

    /// Kernel types weaker than AVX-512 that OpenBLAS may be forced onto.
    static let avx2OrWeaker: Set<String> = ["haswell", "zen", "sandybridge", "nehalem", "core2", "prescott", "atom", "penryn", "dunnington", "bulldozer", "piledriver", "steamroller", "excavator", "katmai", "coppermine", "northwood", "opteron", "barcelona", "nano", "bobcat"]

    public static var cpuHasAVX512: Bool {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
        guard let flagsLine = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return false }
        let flags = Set(flagsLine.split(separator: " ").map(String.init))
        return flags.contains("avx512f") && flags.contains("avx512bw") && flags.contains("avx512vl")
    }

    /// The environment a child (worker) process should get: the forced weak core type removed
    /// unless the user asked to keep it.
    public static func childEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> [String: String] {
        var env = env
        if shouldDropCoreType(env) {
            env["OPENBLAS_CORETYPE"] = nil
            env["OPENBLAS_L2_SIZE"] = nil
        }
        if env[timeoutVariable] == nil { env[timeoutVariable] = defaultThreadTimeout }
        return env
    }

    /// OpenBLAS's idle threads spin for 2^n cycles after each GEMM before they sleep; its default
    /// n = 28 (~0.1 s) keeps them busy through the elementwise work between GEMMs, on the core
    /// that work is split onto (`Parallel`). n = 14 (~5 µs): bench-1k's fp32 training step took
    /// 1.13-1.15 s against 1.25-1.27 s with the default (same build, back to back). A value the
    /// user sets is kept.
    public static let timeoutVariable = "OPENBLAS_THREAD_TIMEOUT"
    public static let defaultThreadTimeout = "14"

    public static func shouldDropCoreType(_ env: [String: String]) -> Bool {
        guard env[keepVariable] != "1", let forced = env["OPENBLAS_CORETYPE"], !forced.isEmpty else { return false }
        return avx2OrWeaker.contains(forced.lowercased()) && cpuHasAVX512
    }

    /// Re-execs the current process once without a weaker forced core type. Returns normally
    /// when nothing needs changing (or the exec fails, in which case it logs why).
    public static func reexecIfNeeded() {
        HVRuntime.configureProcess()
        let env = ProcessInfo.processInfo.environment
        let dropCoreType = shouldDropCoreType(env)
        guard env[markerVariable] == nil, dropCoreType || env[timeoutVariable] == nil else { return }
        if dropCoreType {
            unsetenv("OPENBLAS_CORETYPE")
            unsetenv("OPENBLAS_L2_SIZE")
        }
        if env[timeoutVariable] == nil { setenv(timeoutVariable, defaultThreadTimeout, 1) }
        setenv(markerVariable, "1", 1)
        let path = "/proc/self/exe"
        let args = CommandLine.arguments
        var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cargs.append(nil)
        execv(path, cargs)
        let reason = String(cString: strerror(errno))
        FileHandle.standardError.write(Data("hv: could not re-exec to set OpenBLAS's environment (\(reason)); continuing with \(env["OPENBLAS_CORETYPE"] ?? "its default") kernels and thread timeout\n".utf8))
    }
}

/// Wall time of hv's fp32 GEMM calls per shape (m x n x k and transposes), for `hv-bench step|sample
/// --gemm-shapes`: set `BLAS.shapeLog` to collect, off (nil) by default.
public final class GemmShapeLog: Sendable {
    private struct Entry { var calls = 0, nanos = 0.0, best = Double.infinity, flops = 0.0 }
    private let table = Mutex<[String: Entry]>([:])

    public init() {}

    func record(m: Int, n: Int, k: Int, transA: Bool, transB: Bool, since t0: UInt64) {
        let ns = Double(DispatchTime.now().uptimeNanoseconds - t0)
        let key = "\(m)x\(n)x\(k)\(transA ? " A^T" : "")\(transB ? " B^T" : "")"
        table.withLock { t in
            var e = t[key] ?? Entry()
            e.calls += 1; e.nanos += ns; e.best = min(e.best, ns); e.flops = 2 * Double(m * n * k)
            t[key] = e
        }
    }

    /// A heading, then one line per shape, most total time first: total ms, calls, average and
    /// best GFLOP/s.
    public func report() -> [String] {
        ["hv fp32 GEMM calls by shape (m x n x k; A^T / B^T: transposed operand):"] + table.withLock { t in
            t.sorted { $0.value.nanos > $1.value.nanos }.map { key, e in
                String(format: "%9.1f ms  %5d calls  avg %6.1f  best %6.1f GFLOP/s  %@", e.nanos / 1e6, e.calls,
                       e.flops * Double(e.calls) / e.nanos, e.flops / e.best, key as NSString)
            }
        }
    }
}

extension BLAS {
    /// Collects per-shape GEMM times when set (see `GemmShapeLog`).
    nonisolated(unsafe) public static var shapeLog: GemmShapeLog?
}
