import CHVZeroMQ
import Foundation
import HVTensor

/// Ring collectives directly between workers over ZeroMQ PUSH/PULL links (PAIR does not
/// reconnect over TCP). Each rank binds one PULL inbox and connects a PUSH to each peer it
/// sends to. Large buffers travel in chunks of `chunkElements` (1 MiB of fp32 by default),
/// each sent before the matching one is received, so transfer and reduction overlap.
///
/// Ring all-reduce = reduce-scatter + all-gather: 2(n-1)/n x bytes per rank.
public final class ZMQRingCommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let worldSize: Int
    public var step = 0
    public var timeoutSeconds: Double
    /// Wire precision: `.bfloat16` halves traffic (all-gathered values are rounded to bf16 on
    /// every rank, the owner included, so all ranks stay identical).
    public var wireDType: WireHeader.DType = .float32
    public var chunkElements = 262_144

    private let context: ZMQContext
    private let ownsContext: Bool
    private let inbox: ZMQSocket
    private var outboxes: [Int: ZMQSocket] = [:]
    private var peerEndpoints: [String] = []
    private var sequence: UInt64 = 0
    private var stash: [Int: [(WireHeader, ZMQMessage)]] = [:]
    /// fp32 payloads go out without a copy (libzmq reads the caller's buffer from its I/O
    /// thread); every collective waits for them to be released before it returns, so the
    /// caller may then reuse its buffer.
    public var zeroCopySends = true
    private let inFlight = InFlightSends()
    /// What peers connect to (resolved port for `tcp://host:*`); with `sameHostIPC`, also a
    /// Unix-domain socket, comma-separated: `tcp://10.0.0.2:4107,ipc://@hv-KEY-...`.
    public let endpoint: String

    /// Authentication of the data plane (nil: none — only for a network you trust).
    public let auth: ZMQAuth?
    /// Largest frame the inbox accepts; a bigger one makes libzmq drop the sender's connection
    /// before allocating it (so a peer can never make us allocate what it claims).
    public let maxFrameBytes: Int
    /// Frames received from a rank but not yet wanted are kept at most this many per rank.
    public var maxStashedPerPeer = 4096

    /// `auth`: the inbox becomes a CURVE server admitting only the run's rank keys (ZAP) and
    /// every outbox a CURVE client; refused connections are reported through `log`.
    /// `sameHostIPC`: the inbox also binds an abstract Unix-domain socket named after this host
    /// and network namespace (`hostKey`); peers with the same key connect there instead of over
    /// TCP loopback (fewer kernel copies' worth of TCP processing), the others use `bind`.
    public init(rank: Int, worldSize: Int, bind: String, context: ZMQContext? = nil, timeoutSeconds: Double = 120,
                auth: ZMQAuth? = nil, maxFrameBytes: Int = 256 << 20, sameHostIPC: Bool = false,
                log: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data(("hv: " + $0 + "\n").utf8)) }) throws {
        precondition(rank >= 0 && rank < worldSize, "rank \(rank) outside world of \(worldSize)")
        self.rank = rank
        self.worldSize = worldSize
        self.timeoutSeconds = timeoutSeconds
        self.auth = auth
        self.maxFrameBytes = maxFrameBytes
        ownsContext = context == nil
        self.context = try context ?? ZMQContext(ioThreads: 1)
        inbox = try self.context.makeSocket(.pull)
        try inbox.setReceiveHighWaterMark(0)
        try inbox.setReceiveTimeout(milliseconds: Int(timeoutSeconds * 1000))
        try inbox.setLinger(milliseconds: 0)
        try inbox.setMaxMessageSize(maxFrameBytes)
        if let auth { try auth.configureServer(inbox) { log("rank \(rank) data-plane inbox: " + $0) } }
        try inbox.bind(bind)
        var advertised = try inbox.lastEndpoint
        if sameHostIPC {
            var nonce = SystemRandomNumberGenerator()
            try inbox.bind("ipc://@hv-\(Self.hostKey)-\(getpid())-\(rank)-\(String(nonce.next() as UInt32, radix: 16))")
            advertised += "," + (try inbox.lastEndpoint)
        }
        endpoint = advertised
    }

    /// This host and network namespace: boot id, the namespace's inode and the host name,
    /// hashed (FNV-1a). Abstract Unix sockets are visible exactly within one network namespace.
    public static let hostKey: String = {
        let boot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)) ?? ""
        let netns = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? ""
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in (boot + "|" + netns + "|" + ProcessInfo.processInfo.hostName).utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }()

    /// The endpoint to use for a peer's advertised list: its Unix socket when it is on this host
    /// and namespace, else its first network endpoint.
    public static func route(_ advertised: String) -> String {
        let parts = advertised.split(separator: ",").map(String.init)
        if let local = parts.first(where: { $0.hasPrefix("ipc://@hv-\(hostKey)-") }) { return local }
        return parts.first(where: { !$0.hasPrefix("ipc://@hv-") }) ?? advertised
    }

    /// Records every rank's inbox endpoint (index = rank); links are opened on first use.
    public func connect(peers: [String]) throws {
        precondition(peers.count == worldSize, "\(peers.count) endpoints for a world of \(worldSize)")
        peerEndpoints = peers.map(Self.route)
    }

    /// The endpoint each rank is (or will be) reached at, after `connect(peers:)`.
    public var routes: [String] { peerEndpoints }

    public func close() {
        // Messages still queued point into callers' buffers: drop them (linger 0) rather than
        // let libzmq read freed memory later.
        if inFlight.count > 0 { for (_, s) in outboxes { try? s.setLinger(milliseconds: 0) } }
        for (_, s) in outboxes { s.close() }
        outboxes.removeAll()
        inbox.close()
        if ownsContext { context.close() }
    }

    deinit { close() }

    private func outbox(_ peer: Int) throws -> ZMQSocket {
        if let s = outboxes[peer] { return s }
        let s = try context.makeSocket(.push)
        try s.setSendHighWaterMark(0)
        try s.setSendTimeout(milliseconds: Int(timeoutSeconds * 1000))
        try s.setLinger(milliseconds: 2000)
        if let auth { try auth.configureClient(s) }
        try s.connect(peerEndpoints[peer])
        outboxes[peer] = s
        return s
    }

    // MARK: Framing

    private func sendChunk(_ src: UnsafePointer<Float>, count: Int, to peer: Int, kind: WireHeader.Kind, seq: UInt64,
                           chunk: Int, collective: String) throws {
        let header = WireHeader(source: rank, kind: kind, dtype: wireDType, sequence: seq, chunk: chunk, count: count)
        do {
            let s = try outbox(peer)
            try s.send(header.bytes, more: true)
            if wireDType == .float32 && zeroCopySends && count > 0 {
                inFlight.add()
                let inFlight = self.inFlight
                let raw = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(mutating: src), count: count * 4)
                try s.sendNoCopy(raw) { _ in inFlight.done() }
            } else if wireDType == .float32 {
                try s.send(UnsafeRawBufferPointer(start: src, count: count * 4))
            } else {
                var tmp = [UInt16](repeating: 0, count: count)
                tmp.withUnsafeMutableBufferPointer { BFloat16Conversion.encode(src, $0.baseAddress!, count: count) }
                try tmp.withUnsafeBytes { try s.send($0) }
            }
        } catch ZMQError.timedOut {
            throw CommError.timeout(collective: collective, step: step, rank: rank, waitingFor: [peer], seconds: timeoutSeconds)
        } catch let e as CommError { throw e } catch {
            throw CommError.transport(collective: collective, step: step, rank: rank, underlying: error)
        }
    }

    /// Receives the expected chunk from `peer`, validated; calls `consume` with its elements.
    private func receiveChunk(from peer: Int, kind: WireHeader.Kind, seq: UInt64, chunk: Int, count: Int, collective: String,
                              _ consume: (UnsafeRawBufferPointer, WireHeader.DType) -> Void) throws {
        func violation(_ d: String, _ p: Int = peer) -> CommError {
            .protocolViolation(collective: collective, step: step, rank: rank, peer: p, detail: d)
        }
        while true {
            let header: WireHeader, payload: ZMQMessage
            if var queued = stash[peer], !queued.isEmpty {
                (header, payload) = queued.removeFirst()
                stash[peer] = queued
            } else {
                let frames: [ZMQMessage]
                do { frames = try inbox.receiveMultipartMessages() } catch ZMQError.timedOut {
                    throw CommError.timeout(collective: collective, step: step, rank: rank, waitingFor: [peer], seconds: timeoutSeconds)
                } catch { throw CommError.transport(collective: collective, step: step, rank: rank, underlying: error) }
                // Everything a peer claims is checked against the frames before it is used.
                let sender = frames[0].senderDescription
                guard frames.count == 2 else { throw violation("\(frames.count) frames from \(sender), expected header + payload", -1) }
                let parsed = frames[0].withUnsafeBytes { WireHeader.parse($0) }
                switch parsed {
                case .failure(let e): throw violation("\(e) from \(sender)", -1)
                case .success(let h):
                    guard Int(h.source) < worldSize else { throw violation("\(sender) claims source rank \(h.source) in a world of \(worldSize)", -1) }
                    if auth != nil, let user = frames[0].property("User-Id"), user != "rank-\(h.source)" {
                        throw violation("\(sender) claims to be rank \(h.source)", -1)
                    }
                    guard frames[1].count == Int(h.count) * h.dtype.bytes else {
                        throw violation("payload of \(frames[1].count) bytes for \(h.count) elements", Int(h.source))
                    }
                    header = h
                    payload = frames[1]
                }
                if Int(header.source) != peer {
                    guard stash[Int(header.source), default: []].count < maxStashedPerPeer else {
                        throw violation("more than \(maxStashedPerPeer) unexpected messages queued from rank \(header.source)", Int(header.source))
                    }
                    stash[Int(header.source), default: []].append((header, payload))
                    continue
                }
            }
            guard header.kind == kind, header.sequence == seq, header.chunk == UInt32(chunk) else {
                throw violation("got \(header.kind) #\(header.sequence) chunk \(header.chunk), expected \(kind) #\(seq) chunk \(chunk) — ranks are running different collectives")
            }
            guard Int(header.count) == count else { throw violation("\(header.count) elements, expected \(count) — buffer sizes differ between ranks") }
            payload.withUnsafeBytes { consume($0, header.dtype) }
            return
        }
    }

    private func nextSequence() -> UInt64 { sequence += 1; return sequence }

    /// Waits until libzmq has released every zero-copy payload (it has handed them to the
    /// kernel), so the caller's buffer may change. Bounded by the timeout.
    private func drainSends(collective: String) throws {
        if inFlight.count == 0 { return }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var spins = 0
        while inFlight.count > 0 {
            spins += 1
            if spins < 200 { sched_yield() } else { usleep(20) }
            if spins % 1000 == 0 && Date() > deadline {
                let peers = Array(outboxes.keys).sorted()
                throw CommError.timeout(collective: collective + " (send completion)", step: step, rank: rank, waitingFor: peers,
                                        seconds: timeoutSeconds)
            }
        }
    }

    /// Splits `range` into chunks of at most `chunkElements`.
    private func chunks(_ range: Range<Int>) -> [Range<Int>] {
        if range.isEmpty { return [range] }
        return stride(from: range.lowerBound, to: range.upperBound, by: chunkElements).map { $0..<min($0 + chunkElements, range.upperBound) }
    }

    // MARK: Collectives

    public func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        try reduceScatter(buffer, count: count, drain: true)
    }

    /// `drain: false` is for all-reduce only: there, every chunk sent here is overwritten by the
    /// all-gather only after it has travelled the whole ring (causally after libzmq sent it).
    private func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, count: Int, drain: Bool) throws {
        let W = worldSize
        if W == 1 { return }
        let seq = nextSequence(), next = (rank + 1) % W, prev = (rank + W - 1) % W
        for s in 0..<(W - 1) {
            let sendChunks = chunks(shardRange(count: count, rank: (rank - s - 1 + 2 * W) % W, world: W))
            let recvChunks = chunks(shardRange(count: count, rank: (rank - s - 2 + 2 * W) % W, world: W))
            for i in 0..<max(sendChunks.count, recvChunks.count) {
                if i < sendChunks.count {
                    let c = sendChunks[i]
                    try sendChunk(buffer + c.lowerBound, count: c.count, to: next, kind: .reduceScatter, seq: seq, chunk: s << 16 | i,
                                  collective: "reduce-scatter")
                }
                if i < recvChunks.count {
                    let c = recvChunks[i]
                    let dst = buffer + c.lowerBound
                    try receiveChunk(from: prev, kind: .reduceScatter, seq: seq, chunk: s << 16 | i, count: c.count, collective: "reduce-scatter") { raw, dt in
                        if dt == .float32 {
                            let src = raw.bindMemory(to: Float.self)
                            for j in 0..<c.count { dst[j] += src[j] }
                        } else {
                            let src = raw.bindMemory(to: UInt16.self)
                            for j in 0..<c.count { dst[j] += Float(bitPattern: UInt32(src[j]) << 16) }
                        }
                    }
                }
            }
        }
        if drain { try drainSends(collective: "reduce-scatter") }
    }

    public func allGather(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let W = worldSize
        if W == 1 { return }
        if wireDType == .bfloat16 {
            let own = shardRange(count: count, rank: rank, world: W)
            for j in own { buffer[j] = BFloat16(buffer[j]).float }
        }
        let seq = nextSequence(), next = (rank + 1) % W, prev = (rank + W - 1) % W
        for s in 0..<(W - 1) {
            let sendChunks = chunks(shardRange(count: count, rank: (rank - s + W) % W, world: W))
            let recvChunks = chunks(shardRange(count: count, rank: (rank - s - 1 + 2 * W) % W, world: W))
            for i in 0..<max(sendChunks.count, recvChunks.count) {
                if i < sendChunks.count {
                    let c = sendChunks[i]
                    try sendChunk(buffer + c.lowerBound, count: c.count, to: next, kind: .allGather, seq: seq, chunk: s << 16 | i,
                                  collective: "all-gather")
                }
                if i < recvChunks.count {
                    let c = recvChunks[i]
                    let dst = buffer + c.lowerBound
                    try receiveChunk(from: prev, kind: .allGather, seq: seq, chunk: s << 16 | i, count: c.count, collective: "all-gather") { raw, dt in
                        if dt == .float32 {
                            dst.update(from: raw.bindMemory(to: Float.self).baseAddress!, count: c.count)
                        } else {
                            BFloat16Conversion.decode(raw.bindMemory(to: UInt16.self).baseAddress!, dst, count: c.count)
                        }
                    }
                }
            }
        }
        try drainSends(collective: "all-gather")
    }

    public func allReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        try reduceScatter(buffer, count: count, drain: false)
        try allGather(buffer, count: count)
    }

    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        let W = worldSize
        if W == 1 { return }
        let seq = nextSequence(), next = (rank + 1) % W, prev = (rank + W - 1) % W
        let parts = chunks(0..<count)
        if wireDType == .bfloat16 && rank == root { for j in 0..<count { buffer[j] = BFloat16(buffer[j]).float } }
        for (i, c) in parts.enumerated() {
            if rank != root {
                let dst = buffer + c.lowerBound
                try receiveChunk(from: prev, kind: .broadcast, seq: seq, chunk: i, count: c.count, collective: "broadcast") { raw, dt in
                    if dt == .float32 { dst.update(from: raw.bindMemory(to: Float.self).baseAddress!, count: c.count) } else {
                        BFloat16Conversion.decode(raw.bindMemory(to: UInt16.self).baseAddress!, dst, count: c.count)
                    }
                }
            }
            if next != root {
                try sendChunk(buffer + c.lowerBound, count: c.count, to: next, kind: .broadcast, seq: seq, chunk: i, collective: "broadcast")
            }
        }
        try drainSends(collective: "broadcast")
    }

    public func barrier() throws {
        var token = [Float](repeating: 1, count: worldSize)
        try token.withUnsafeMutableBufferPointer { try allReduce($0.baseAddress!, count: worldSize) }
        guard token.allSatisfy({ $0 == Float(worldSize) }) else {
            throw CommError.protocolViolation(collective: "barrier", step: step, rank: rank, peer: -1, detail: "token sum \(token) != \(worldSize)")
        }
    }

    public func send(_ buffer: UnsafePointer<Float>, count: Int, to peer: Int, tag: UInt64) throws {
        for (i, c) in chunks(0..<count).enumerated() {
            try sendChunk(buffer + c.lowerBound, count: c.count, to: peer, kind: .pointToPoint, seq: tag, chunk: i, collective: "send")
        }
        try drainSends(collective: "send")
    }

    public func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from peer: Int, tag: UInt64) throws {
        for (i, c) in chunks(0..<count).enumerated() {
            let dst = buffer + c.lowerBound
            try receiveChunk(from: peer, kind: .pointToPoint, seq: tag, chunk: i, count: c.count, collective: "receive") { raw, dt in
                if dt == .float32 { dst.update(from: raw.bindMemory(to: Float.self).baseAddress!, count: c.count) } else {
                    BFloat16Conversion.decode(raw.bindMemory(to: UInt16.self).baseAddress!, dst, count: c.count)
                }
            }
        }
    }
}

/// Counts zero-copy payloads that libzmq still holds (released on its I/O thread).
final class InFlightSends: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    func done() { lock.withLock { n -= 1 } }
    var count: Int { lock.withLock { n } }
}
