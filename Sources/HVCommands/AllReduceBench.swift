import ArgumentParser
import Foundation
import HVComm
import HVTensor

/// `hv-bench allreduce`: ring all-reduce of `ZMQRingCommunicator` between `--ranks` local
/// processes over TCP loopback, and (with `--torch VENV`) torch.distributed's gloo backend with
/// the same process count, sizes and runs, side by side.
///
/// Rendezvous: the parent binds a ROUTER on tcp://127.0.0.1:* and starts each rank as
/// `hv-bench allreduce-rank`; every rank binds its ring inbox on an ephemeral port, says hello
/// (its endpoint) through a DEALER, gets the full endpoint list back, runs the sizes and sends
/// its per-run times to the parent. Per run, the time is the slowest rank's (every run starts
/// after a barrier); the figure is the median over runs. Bus bandwidth = 2(n-1)/n x bytes / time.
struct AllReduceBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allreduce",
        abstract: "Ring all-reduce time and bus bandwidth between local processes (and gloo's, with --torch).")

    @Option(help: "Processes in the ring.") var ranks = 4
    @Option(help: "Buffer size (fp32 bytes; K/M/G = KiB/MiB/GiB); repeat for several sizes.") var bytes: [String] = ["64M"]
    @Option(help: "Timed runs per size (median reported) after one warm-up.") var runs = 10
    @Option(help: "A Python venv with torch: also time torch.distributed gloo with the same settings.") var torch: String?
    @Flag(help: "bf16 on the wire (hv: wireDType .bfloat16; gloo: a bf16 tensor of the same element count).") var bf16 = false
    @Option(help: "hv: elements per message (ZMQRingCommunicator.chunkElements; default its own, 262144 = 1 MiB).") var chunk: Int?
    @Option(help: "hv: ZeroMQ I/O threads per rank.") var ioThreads = 1
    @Option(help: "hv: the ring's transport, ipc (Unix domain sockets: what `hv-coord launch` uses between workers on one host) or tcp (loopback).")
    var transport = "ipc"
    @Flag(inversion: .prefixedNo,
          help: "Set MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 for the rank processes (both sides).")
    var mallocTuning = true
    @Option(help: "Seconds before a stuck rank is reported.") var timeout = 300.0
    @Option(help: "hv: data-plane authentication, none, curve or hmac (what `hv-coord launch` uses; to measure its cost).")
    var auth = "none"
    @Option(help: ArgumentHelp("Time a minimal ring instead of ZMQRingCommunicator (for diagnosis): copy (zmq_send, as hv) or nocopy (zmq_msg_init_data).",
                               visibility: .hidden)) var prototype: String?

    func run() throws {
        try runOrExit {
            if let prototype, !["copy", "nocopy"].contains(prototype) { throw ValidationError("--prototype copy|nocopy") }
            guard ["ipc", "tcp"].contains(transport) else { throw ValidationError("--transport must be ipc or tcp") }
            guard ranks >= 2 else { throw ValidationError("--ranks must be at least 2") }
            let sizes = try bytes.map(benchParseBytes)
            let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            var env = ProcessInfo.processInfo.environment
            if mallocTuning {
                env["MALLOC_ARENA_MAX"] = "1"
                env["MALLOC_MMAP_THRESHOLD_"] = "1073741824"
            }
            let hv = try runHV(exe: exe, sizes: sizes, env: env)
            let chunkUsed = hv.chunk
            let n = Double(ranks)
            print("hv ring all-reduce: \(ranks) processes over \(transport == "ipc" ? "Unix sockets (ipc://, as hv-coord launch on one host)" : "tcp://127.0.0.1"), \(runs) runs per size (median of the slowest rank per run), wire \(bf16 ? "bf16" : "fp32"), ZeroMQ I/O threads \(ioThreads), malloc tuning \(mallocTuning ? "MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1GiB" : "off")")
            if let prototype { print("*** timing the minimal prototype ring (--prototype \(prototype)), not ZMQRingCommunicator ***") }
            print("algorithm: ring reduce-scatter + all-gather, chunk \(chunkUsed) elements (\(benchFormatBytes(chunkUsed * 4)) fp32), each chunk sent before the matching one is received")
            var gloo: [Int: (median: Double, min: Double)] = [:]
            var glooInfo = ""
            if let torch {
                (gloo, glooInfo) = try runGloo(venv: torch, sizes: sizes, env: env)
                print("gloo: \(glooInfo)")
            }
            print("")
            var header = "     size    hv median     hv min   hv bus BW"
            if torch != nil { header += "   gloo median   gloo bus BW   hv/gloo (bus BW)" }
            print(header)
            for (i, size) in sizes.enumerated() {
                let (med, lo) = hv.results[i]
                let bw = 2 * (n - 1) / n * Double(size) / med / 1e9
                var line = String(format: "%9@  %9.2f ms  %7.2f ms  %6.2f GB/s", benchFormatBytes(size) as NSString, med * 1e3, lo * 1e3, bw)
                if let g = gloo[size] {
                    let gbw = 2 * (n - 1) / n * Double(size) / g.median / 1e9
                    line += String(format: "   %8.2f ms   %6.2f GB/s   %.2f", g.median * 1e3, gbw, bw / gbw)
                }
                print(line)
            }
            if bf16 { print("(bf16: sizes and bus bandwidth count the fp32 buffer; the wire carries half of it)") }
            print("bus BW = 2(n-1)/n x bytes / time (nccl-tests / gloo convention); target: hv >= 1.0 x gloo at 64 MiB")
        }
    }

    /// Starts the ranks, does the rendezvous and collects their times.
    func runHV(exe: String, sizes: [Int], env: [String: String]) throws -> (chunk: Int, results: [(Double, Double)]) {
        let ctx = try ZMQContext(ioThreads: 1)
        defer { ctx.close() }
        let router = try ctx.makeSocket(.router)
        defer { router.close() }
        try router.setRouterMandatory(true)
        try router.setLinger(milliseconds: 500)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        var procs: [Process] = []
        var keyFile: String?
        if auth != "none" {
            guard let m = AuthMechanism(rawValue: auth) else { throw ValidationError("--auth must be none, curve or hmac") }
            let path = NSTemporaryDirectory() + "/hv-bench-keys-\(getpid()).json"
            unlink(path)
            try RunKeys.generate(worldSize: ranks, mechanism: m).write(to: path)
            keyFile = path
        }
        defer { if let keyFile { unlink(keyFile) } }
        func stopAll() {
            for p in procs where p.isRunning { p.terminate() }
            for p in procs { p.waitUntilExit() }
        }
        for r in 0..<ranks {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            var args = ["allreduce-rank", "--parent", endpoint, "--rank", "\(r)", "--world", "\(ranks)", "--runs", "\(runs)", "--transport", transport,
                        "--io-threads", "\(ioThreads)", "--timeout", "\(timeout)"]
            for s in sizes { args += ["--bytes", "\(s)"] }
            if let chunk { args += ["--chunk", "\(chunk)"] }
            if bf16 { args.append("--bf16") }
            if let prototype { args += ["--prototype", prototype] }
            if let keyFile { args += ["--key-file", keyFile] }
            p.arguments = args
            p.environment = env
            p.standardInput = FileHandle.nullDevice
            do { try p.run() } catch { stopAll(); throw ValidationError("cannot start rank \(r): \(error)") }
            procs.append(p)
        }
        func receive(deadline: Date) throws -> [String: Any] {
            while Date() < deadline {
                let ready = try ZMQ.poll([(router, .readable)], timeoutMilliseconds: 200)
                if ready[0].contains(.readable) {
                    let frames = try router.receiveMultipart()
                    guard frames.count == 2, let obj = try? JSONSerialization.jsonObject(with: Data(frames[1])) as? [String: Any] else { continue }
                    return obj
                }
                if let dead = procs.firstIndex(where: { !$0.isRunning && $0.terminationStatus != 0 }) {
                    stopAll()
                    throw ValidationError("rank \(dead) exited with status \(procs[dead].terminationStatus) (its error is above)")
                }
            }
            stopAll()
            throw ValidationError("the ranks did not report within \(timeout)s")
        }
        let deadline = Date().addingTimeInterval(timeout)
        var endpoints = [String?](repeating: nil, count: ranks)
        var protoEndpoints = [String](repeating: "", count: ranks)
        while endpoints.contains(where: { $0 == nil }) {
            let m = try receive(deadline: deadline)
            if let r = m["rank"] as? Int, let e = m["endpoint"] as? String, (0..<ranks).contains(r) {
                endpoints[r] = e
                protoEndpoints[r] = m["proto"] as? String ?? ""
            }
        }
        let peers = try JSONSerialization.data(withJSONObject: ["peers": endpoints.map { $0! }, "proto": protoEndpoints])
        for r in 0..<ranks {
            try router.send(Array("rank-\(r)".utf8), more: true)
            try router.send(peers)
        }
        var times = [[[Double]]](repeating: [], count: ranks)   // [rank][size][run]
        var chunkUsed = chunk ?? 0
        var got = 0
        let resultsDeadline = Date().addingTimeInterval(timeout * Double(max(1, sizes.count)))
        while got < ranks {
            let m = try receive(deadline: resultsDeadline)
            guard let r = m["rank"] as? Int, let t = m["times"] as? [[Double]] else { continue }
            if let err = m["error"] as? String { stopAll(); throw ValidationError("rank \(r): \(err)") }
            times[r] = t
            chunkUsed = m["chunk"] as? Int ?? chunkUsed
            got += 1
        }
        for p in procs { p.waitUntilExit() }
        if let bad = procs.firstIndex(where: { $0.terminationStatus != 0 }) {
            throw ValidationError("rank \(bad) exited with status \(procs[bad].terminationStatus)")
        }
        let results = sizes.indices.map { i -> (Double, Double) in
            let perRun = (0..<runs).map { k in (0..<ranks).map { times[$0][i][k] }.max()! }
            return (benchMedian(perRun), perRun.min()!)
        }
        return (chunkUsed, results)
    }

    func runGloo(venv: String, sizes: [Int], env: [String: String]) throws -> ([Int: (median: Double, min: Double)], String) {
        let py = (venv as NSString).appendingPathComponent("bin/python")
        let script = "scripts/dev/gloo_allreduce_bench.py"
        var args = [script, "--ranks", "\(ranks)", "--runs", "\(runs)"] + sizes.flatMap { ["--bytes", "\($0)"] }
        if bf16 { args.append("--bf16") }
        let obj = try runPythonJSON(venv: venv, args: args, threads: 1, env: env, side: "gloo")
        guard let results = obj["results"] as? [[String: Any]] else {
            throw ValidationError("the gloo side printed no results; run \(py) \(args.joined(separator: " ")) to see why")
        }
        var out: [Int: (median: Double, min: Double)] = [:]
        for r in results {
            if let b = r["bytes"] as? Int, let med = r["median_s"] as? Double, let lo = r["min_s"] as? Double { out[b] = (med, lo) }
        }
        return (out, "torch \(obj["torch"] ?? "?") gloo, \(ranks) processes, init tcp://127.0.0.1, \(obj["algorithm"] ?? "")")
    }
}

/// One rank of `hv-bench allreduce` (started by it).
struct AllReduceRank: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "allreduce-rank", abstract: "One rank of `hv-bench allreduce`.",
                                                    shouldDisplay: false)
    @Option var parent: String
    @Option var rank: Int
    @Option var world: Int
    @Option var bytes: [Int]
    @Option var runs = 10
    @Option var chunk: Int?
    @Option var ioThreads = 1
    @Option var timeout = 300.0
    @Flag var bf16 = false
    @Option var prototype: String?
    @Option var keyFile: String?
    @Option var transport = "tcp"

    func run() throws {
        try runOrExit {
            let ctx = try ZMQContext(ioThreads: ioThreads)
            defer { ctx.close() }
            let control = try ctx.makeSocket(.dealer)
            defer { control.close() }
            try control.setRoutingID(Array("rank-\(rank)".utf8))
            try control.setLinger(milliseconds: 2000)
            try control.setReceiveTimeout(milliseconds: Int(timeout * 1000))
            try control.setSendTimeout(milliseconds: Int(timeout * 1000))
            try control.connect(parent)
            let auth = try keyFile.map { try RunKeys.read(path: $0, worldSize: world).auth(rank: rank) }
            let comm = try ZMQRingCommunicator(rank: rank, worldSize: world, bind: "tcp://127.0.0.1:*", context: ctx, timeoutSeconds: timeout,
                                               auth: auth, sameHostIPC: transport == "ipc")
            defer { comm.close() }
            if let chunk { comm.chunkElements = chunk }
            if bf16 { comm.wireDType = .bfloat16 }
            // Diagnosis only: a minimal ring on its own PULL inbox / PUSH link.
            var proto: PrototypeRing?
            if let prototype {
                proto = try PrototypeRing(context: ctx, rank: rank, world: world, chunk: chunk ?? comm.chunkElements,
                                          zeroCopy: prototype == "nocopy", timeout: timeout)
            }
            defer { proto?.close() }
            try control.send(try JSONSerialization.data(withJSONObject: ["rank": rank, "endpoint": comm.endpoint, "proto": proto?.endpoint ?? ""]))
            guard let reply = try JSONSerialization.jsonObject(with: Data(try control.receive())) as? [String: Any],
                  let peers = reply["peers"] as? [String] else { throw ValidationError("bad rendezvous reply") }
            try comm.connect(peers: peers)
            if let proto, let pe = reply["proto"] as? [String] { try proto.connect(next: pe[(rank + 1) % world]) }
            func allReduce(_ b: UnsafeMutablePointer<Float>, _ n: Int) throws {
                if let proto { try proto.allReduce(b, count: n) } else { try comm.allReduce(b, count: n) }
            }

            var times: [[Double]] = []
            var error: String?
            let expected = Float(world * (world + 1) / 2)
            for size in bytes {
                let count = size / 4
                let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
                defer { buffer.deallocate() }
                func fill() { buffer.update(repeating: Float(rank + 1), count: count) }
                fill()
                try comm.barrier()
                try allReduce(buffer, count)   // warm-up (connections, page faults)
                var t: [Double] = []
                for _ in 0..<runs {
                    fill()
                    try comm.barrier()
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    try allReduce(buffer, count)
                    t.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                }
                if let j = (0..<count).first(where: { buffer[$0] != expected }) {
                    error = "wrong sum at element \(j) of \(count): \(buffer[j]), expected \(expected)"
                }
                times.append(t)
            }
            try comm.barrier()
            var msg: [String: Any] = ["rank": rank, "times": times, "chunk": comm.chunkElements]
            if let error { msg["error"] = error }
            try control.send(try JSONSerialization.data(withJSONObject: msg))
        }
    }
}

/// Outstanding zero-copy sends (released by libzmq's I/O thread).
fileprivate final class PendingSends: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    func done() { lock.withLock { n -= 1 } }
    var count: Int { lock.withLock { n } }
}

/// The same ring schedule as ZMQRingCommunicator (chunks, send-then-receive) without headers,
/// validation or stash, with copied or zero-copy sends: to measure what the copies cost.
fileprivate final class PrototypeRing {
    let rank: Int, world: Int, chunk: Int, zeroCopy: Bool
    let inbox: ZMQSocket
    var out: ZMQSocket?
    let context: ZMQContext
    let endpoint: String
    let pending = PendingSends()
    let timeout: Double

    init(context: ZMQContext, rank: Int, world: Int, chunk: Int, zeroCopy: Bool, timeout: Double) throws {
        self.context = context; self.rank = rank; self.world = world; self.chunk = chunk; self.zeroCopy = zeroCopy; self.timeout = timeout
        inbox = try context.makeSocket(.pull)
        try inbox.setReceiveHighWaterMark(0)
        try inbox.setReceiveTimeout(milliseconds: Int(timeout * 1000))
        try inbox.setLinger(milliseconds: 0)
        try inbox.bind("tcp://127.0.0.1:*")
        endpoint = try inbox.lastEndpoint
    }

    func connect(next: String) throws {
        let s = try context.makeSocket(.push)
        try s.setSendHighWaterMark(0)
        try s.setSendTimeout(milliseconds: Int(timeout * 1000))
        try s.setLinger(milliseconds: 2000)
        try s.connect(next)
        out = s
    }

    func close() { drain(); out?.close(); inbox.close() }

    private func drain() { while pending.count > 0 { usleep(10) } }

    private func send(_ p: UnsafeMutablePointer<Float>, _ n: Int) throws {
        let raw = UnsafeMutableRawBufferPointer(start: p, count: n * 4)
        if zeroCopy {
            pending.add()
            let pending = self.pending
            try out!.sendNoCopy(raw) { _ in pending.done() }
        } else {
            try out!.send(UnsafeRawBufferPointer(raw))
        }
    }

    private func chunks(_ r: Range<Int>) -> [Range<Int>] {
        stride(from: r.lowerBound, to: r.upperBound, by: chunk).map { $0..<min($0 + chunk, r.upperBound) }
    }

    func allReduce(_ buf: UnsafeMutablePointer<Float>, count: Int) throws {
        let W = world
        for phase in 0..<2 {
            for s in 0..<(W - 1) {
                let sendR = chunks(shardRange(count: count, rank: (rank - s - 1 + phase + 2 * W) % W, world: W))
                let recvR = chunks(shardRange(count: count, rank: (rank - s - 2 + phase + 2 * W) % W, world: W))
                for i in 0..<max(sendR.count, recvR.count) {
                    if i < sendR.count { try send(buf + sendR[i].lowerBound, sendR[i].count) }
                    if i < recvR.count {
                        let c = recvR[i], dst = buf + c.lowerBound
                        let m = try inbox.receiveMessage()
                        m.withUnsafeBytes { raw in
                            let src = raw.bindMemory(to: Float.self)
                            precondition(src.count == c.count, "prototype ring: chunk size mismatch")
                            if phase == 0 { for j in 0..<c.count { dst[j] += src[j] } } else { dst.update(from: src.baseAddress!, count: c.count) }
                        }
                    }
                }
            }
            drain()   // the all-gather overwrites regions sent (without copy) in the reduce-scatter
        }
    }
}

func benchMedian(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// "64M" -> 67108864 (K/M/G are binary); a bare number is bytes.
func benchParseBytes(_ s: String) throws -> Int {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
    let mult: Int
    var digits = Substring(t)
    switch t.last {
    case "K": mult = 1 << 10; digits = digits.dropLast()
    case "M": mult = 1 << 20; digits = digits.dropLast()
    case "G": mult = 1 << 30; digits = digits.dropLast()
    default: mult = 1
    }
    guard let v = Double(digits), v > 0 else { throw ValidationError("cannot read a size from '\(s)' (e.g. 64M, 1M, 4096)") }
    let n = Int(v * Double(mult))
    guard n % 4 == 0 else { throw ValidationError("size \(s) is not a whole number of fp32 values") }
    return n
}

func benchFormatBytes(_ n: Int) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 { return "\(n >> 30) GiB" }
    if n >= 1 << 20 && n % (1 << 20) == 0 { return "\(n >> 20) MiB" }
    if n >= 1 << 10 && n % (1 << 10) == 0 { return "\(n >> 10) KiB" }
    if n >= 1 << 20 { return String(format: "%.1f MiB", Double(n) / 1048576) }
    return "\(n) B"
}
