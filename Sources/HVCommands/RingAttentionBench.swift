import ArgumentParser
import Foundation
import HVComm
import HVParallel
import HVTensor

/// `hv-bench ringattn`: per-rank peak memory and time of ring attention (forward + backward)
/// over a long sequence split across cp = 1, 2, 4 local processes (ZeroMQ over TCP loopback).
///
/// Each rank holds only its shard: q/k/v/dout of its video tokens plus all text tokens. Memory
/// is the rise of the process's resident high-water mark (VmHWM, reset through
/// /proc/self/clear_refs after the inputs are built) during one forward + backward: the op's
/// output, log-sum-exp, the ring's chunk buffers (K|V chunks and dK|dV partial sums),
/// ZeroMQ's receive staging, gradients and the FlashAttention tiles. Inputs are reported separately (they are the caller's activations).
/// The ranks run with a fixed glibc mmap threshold (128 KiB, `--no-fixed-mmap` to keep the
/// default): glibc otherwise raises its threshold after the first large free and keeps later
/// freed buffers in the heap, so RSS would measure the allocator's cache, not live memory.
struct RingAttentionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringattn",
        abstract: "Per-rank peak memory and time of ring attention (context parallel) at cp = 1, 2, 4.")

    @Option(help: "Video tokens (the ring-split sequence).") var tokens = 16384
    @Option(help: "Text tokens (every rank holds them all).") var text = 256
    @Option(help: "Attention heads.") var heads = 2
    @Option(help: "Head dimension.") var headDim = 64
    @Option(help: "Context-parallel degrees (comma-separated).") var cp = "1,2,4"
    @Option(help: "Seconds before a stuck rank is reported.") var timeout = 600.0
    @Option(help: "K|V floats per ring round (sets the chunk length; RingAttention.roundElements).") var roundElements = RingAttention.defaultRoundElements
    @Option(help: "Keys per travelling chunk (overrides --round-elements).") var chunkKeys: Int?
    @Flag(inversion: .prefixedNo, help: "Run the ranks with MALLOC_MMAP_THRESHOLD_=131072 (large buffers mapped and unmapped, so RSS follows live memory).")
    var fixedMmap = true

    func run() throws {
        try runOrExit {
            var env = ProcessInfo.processInfo.environment
            if fixedMmap { env["MALLOC_MMAP_THRESHOLD_"] = "131072" }
            let degrees = cp.split(separator: ",").compactMap { Int($0) }
            guard !degrees.isEmpty, degrees.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--cp takes degrees like 1,2,4") }
            let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            outLine("ring attention: \(tokens) video + \(text) text tokens, \(heads) heads x \(headDim), fp32, batch 1; \(chunkKeys.map { "chunks of \($0) keys" } ?? "\(roundElements) K|V floats per ring round"); forward + backward per rank; OpenBLAS \(BLAS.coreName), \(ProcessInfo.processInfo.activeProcessorCount) cores; malloc \(fixedMmap ? "MALLOC_MMAP_THRESHOLD_=131072" : "default")")
            outLine(" cp  rank  video tok  inputs MiB  fwd peak MiB  fwd+bwd peak MiB   fwd s   bwd s")
            for w in degrees {
                let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hv-ringattn-\(UUID().uuidString)").path
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: dir) }
                let procs = try (0..<w).map { r -> (Process, Pipe, Pipe) in
                    let p = Process(), out = Pipe(), err = Pipe()
                    p.executableURL = URL(fileURLWithPath: exe)
                    p.environment = env
                    p.arguments = ["ringattn-rank", "--rank", "\(r)", "--world", "\(w)", "--dir", dir, "--tokens", "\(tokens)", "--text", "\(text)",
                                   "--heads", "\(heads)", "--head-dim", "\(headDim)", "--timeout", "\(timeout)",
                                   "--round-elements", "\(roundElements)"] + (chunkKeys.map { ["--chunk-keys", "\($0)"] } ?? [])
                    p.standardOutput = out
                    p.standardError = err
                    try p.run()
                    return (p, out, err)
                }
                var peaks: [Double] = []
                for (r, (p, out, err)) in procs.enumerated() {
                    let data = out.fileHandleForReading.readDataToEndOfFile()
                    p.waitUntilExit()
                    guard p.terminationStatus == 0,
                          let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Double] else {
                        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                        throw ValidationError("rank \(r) of cp \(w) failed (status \(p.terminationStatus)): \(e)")
                    }
                    let peak = obj["peak_mib"] ?? 0
                    peaks.append(peak)
                    outLine(String(format: "%3d  %4d  %9.0f  %10.1f  %12.1f  %16.1f  %6.2f  %6.2f", w, r, obj["video_tokens"] ?? 0,
                                   obj["inputs_mib"] ?? 0, obj["fwd_peak_mib"] ?? 0, peak, obj["fwd_s"] ?? 0, obj["bwd_s"] ?? 0))
                }
                outLine(String(format: "cp %d: max attention peak %.1f MiB per rank", w, peaks.max() ?? 0))
            }
        }
    }
}

/// One rank of `hv-bench ringattn` (started by it); prints one JSON object.
struct RingAttentionRank: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ringattn-rank", abstract: "One rank of `hv-bench ringattn`.",
                                                    shouldDisplay: false)
    @Option var rank: Int
    @Option var world: Int
    @Option var dir: String
    @Option var tokens: Int
    @Option var text: Int
    @Option var heads: Int
    @Option var headDim: Int
    @Option var timeout = 600.0
    @Option var roundElements: Int
    @Option var chunkKeys: Int?

    func run() throws {
        try runOrExit {
            let comm = try ZMQRingCommunicator(rank: rank, worldSize: world, bind: "tcp://127.0.0.1:*", timeoutSeconds: timeout)
            defer { comm.close() }
            try comm.connect(peers: try fileRendezvous(dir: dir, rank: rank, world: world, endpoint: comm.endpoint, timeout: timeout))
            let ring = RingAttention(comm: comm)
            ring.roundElements = roundElements
            ring.chunkKeys = chunkKeys
            let lengths = (0..<world).map { shardRange(count: tokens, rank: $0, world: world).count }
            let n = lengths[rank], H = heads, D = headDim
            var rng = HVRandom(seed: 7).split(UInt64(rank))
            func randn(_ shape: [Int]) -> Tensor {
                let t = Tensor.randn(shape, rng: &rng)
                t.requiresGrad = true
                return t
            }
            let q = randn([1, H, n + text, D]), k = randn([1, H, n, D]), v = randn([1, H, n, D])
            let tk = text > 0 ? randn([1, H, text, D]) : nil, tv = text > 0 ? randn([1, H, text, D]) : nil
            let mask: Tensor? = text > 0 ? Tensor((0..<text).map { Float($0 < text * 3 / 4 ? 1 : 0) }, shape: [1, text]) : nil
            let dout = Tensor.randn([1, H, n + text, D], rng: &rng)
            let inputs = q.count + k.count + v.count + (tk?.count ?? 0) * 2 + dout.count
            try comm.barrier()
            let before = procStatusKB("VmRSS")
            try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
            let t0 = DispatchTime.now().uptimeNanoseconds
            let out = try ring.attention(q: q, k: k, v: v, shardLengths: lengths, localK: tk, localV: tv, localMask: mask)
            let t1 = DispatchTime.now().uptimeNanoseconds
            let peakForward = procStatusKB("VmHWM")
            out.backward(dout)
            let t2 = DispatchTime.now().uptimeNanoseconds
            let peak = max(peakForward, procStatusKB("VmHWM"))
            try comm.barrier()
            let result: [String: Double] = [
                "video_tokens": Double(n), "inputs_mib": Double(inputs * 4) / 1_048_576,
                "peak_mib": Double(peak - before) / 1024, "fwd_peak_mib": Double(peakForward - before) / 1024, "fwd_s": Double(t1 - t0) / 1e9, "bwd_s": Double(t2 - t1) / 1e9,
            ]
            FileHandle.standardOutput.write(try JSONSerialization.data(withJSONObject: result))
        }
    }
}

/// A field of /proc/self/status in kB (0 when unavailable).
func procStatusKB(_ field: String) -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ").dropFirst().first.map(String.init) ?? "") ?? 0
    }
    return 0
}

/// Rendezvous through a shared directory: writes this rank's endpoint to DIR/endpoint-R and
/// returns every rank's (index = rank) once all are there.
func fileRendezvous(dir: String, rank: Int, world: Int, endpoint: String, timeout: TimeInterval) throws -> [String] {
    let tmp = "\(dir)/.endpoint-\(rank).tmp"
    try endpoint.write(toFile: tmp, atomically: false, encoding: .utf8)
    try FileManager.default.moveItem(atPath: tmp, toPath: "\(dir)/endpoint-\(rank)")
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        let found = (0..<world).map { try? String(contentsOfFile: "\(dir)/endpoint-\($0)", encoding: .utf8) }
        if found.allSatisfy({ $0 != nil }) { return found.map { $0! } }
        if Date() > deadline { throw ValidationError("rendezvous: ranks \((0..<world).filter { found[$0] == nil }) did not start within \(timeout) s") }
        usleep(10_000)
    }
}
