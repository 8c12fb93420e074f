import Foundation
import HVComm
import HVTensor
import XCTest

final class ResultBox<T>: @unchecked Sendable {
    var results: [Result<T, Error>?]
    init(_ n: Int) { results = Array(repeating: nil, count: n) }
}

/// Ring collectives between real ZeroMQ sockets (inproc, one thread per rank) against
/// single-process references, for odd sizes and 1-5 ranks.
final class CollectiveTests: XCTestCase {
    /// Runs `body(comm)` on `world` ranks concurrently; returns per-rank results or rethrows.
    /// `tcp`: loopback TCP instead of inproc, for code whose sends must complete before the
    /// receiver reads (inproc frees a zero-copy payload only when the receiver is done with it).
    func onRanks<T: Sendable>(_ world: Int, dtype: WireHeader.DType = .float32, chunk: Int = 1000, timeout: Double = 20, tcp: Bool = false,
                              _ body: @escaping @Sendable (ZMQRingCommunicator) throws -> T) throws -> [T] {
        let ctx = try ZMQContext()
        defer { ctx.close() }
        let tag = UUID().uuidString
        let comms = try (0..<world).map { r in
            try ZMQRingCommunicator(rank: r, worldSize: world, bind: tcp ? "tcp://127.0.0.1:*" : "inproc://\(tag)-\(r)", context: ctx,
                                    timeoutSeconds: timeout)
        }
        for c in comms {
            try c.connect(peers: comms.map(\.endpoint))
            c.wireDType = dtype
            c.chunkElements = chunk
        }
        let box = ResultBox<T>(world)
        let lock = NSLock()
        let group = DispatchGroup()
        for r in 0..<world {
            let c = comms[r]
            group.enter()
            Thread.detachNewThread {
                let res = Result { try body(c) }
                lock.withLock { box.results[r] = res }
                group.leave()
            }
        }
        group.wait()
        for c in comms { c.close() }
        return try box.results.map { try $0!.get() }
    }

    func input(rank: Int, count: Int) -> [Float] { (0..<count).map { Float(($0 * 7 + rank * 13) % 29) * 0.25 - 3 + Float(rank) } }

    /// Ranks on one host and network namespace advertise TCP plus an abstract Unix socket and
    /// reach each other over the socket; a peer from elsewhere (another host key) is reached over
    /// TCP; an all-reduce over the Unix sockets is exact.
    func testSameHostPeersUseUnixSockets() throws {
        let world = 3, count = 70_001
        let contexts = try (0..<world).map { _ in try ZMQContext() }
        defer { for c in contexts { c.close() } }
        let comms = try (0..<world).map { r in
            try ZMQRingCommunicator(rank: r, worldSize: world, bind: "tcp://127.0.0.1:*", context: contexts[r], timeoutSeconds: 20, sameHostIPC: true)
        }
        defer { for c in comms { c.close() } }
        for c in comms {
            let parts = c.endpoint.split(separator: ",")
            XCTAssertEqual(parts.count, 2, c.endpoint)
            XCTAssert(parts[0].hasPrefix("tcp://127.0.0.1:") && parts[1].hasPrefix("ipc://@hv-\(ZMQRingCommunicator.hostKey)-"), c.endpoint)
            try c.connect(peers: comms.map(\.endpoint))
            XCTAssertEqual(c.routes, comms.map { String($0.endpoint.split(separator: ",")[1]) })
        }
        XCTAssertEqual(ZMQRingCommunicator.route("tcp://10.0.0.7:4100,ipc://@hv-0123456789abcdef-77-1-ff"), "tcp://10.0.0.7:4100")
        XCTAssertEqual(ZMQRingCommunicator.route("tcp://10.0.0.7:4100"), "tcp://10.0.0.7:4100")
        let inputs = (0..<world).map { input(rank: $0, count: count) }
        let box = ResultBox<[Float]>(world)
        let lock = NSLock(), group = DispatchGroup()
        for r in 0..<world {
            let c = comms[r]
            group.enter()
            Thread.detachNewThread {
                let res = Result { () throws -> [Float] in
                    var b = inputs[r]
                    try b.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: count) }
                    return b
                }
                lock.withLock { box.results[r] = res }
                group.leave()
            }
        }
        group.wait()
        let out = try box.results.map { try $0!.get() }
        for i in stride(from: 0, to: count, by: 997) {
            XCTAssertEqual(out[0][i], inputs.reduce(Float(0)) { $0 + $1[i] }, accuracy: 1e-4)
        }
        XCTAssert(out.allSatisfy { $0 == out[0] })
    }

    func testAllReduceReduceScatterAllGatherBroadcast() throws {
        for world in 1...5 {
            for count in [1, 3, 13, 1001, 4099] {
                let expected = (0..<count).map { i in (0..<world).reduce(Float(0)) { $0 + self.input(rank: $1, count: count)[i] } }
                let inputs = (0..<world).map { input(rank: $0, count: count) }
                let ar = try onRanks(world) { c -> [Float] in
                    var b = inputs[c.rank]
                    try b.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: count) }
                    return b
                }
                for r in 0..<world {
                    for i in 0..<count { XCTAssertEqual(ar[r][i], expected[i], accuracy: 1e-4, "allReduce world \(world) count \(count) rank \(r)") }
                }
                XCTAssert(ar.allSatisfy { $0 == ar[0] }, "every rank holds identical values")
                let rs = try onRanks(world) { c -> [Float] in
                    var b = inputs[c.rank]
                    try b.withUnsafeMutableBufferPointer { try c.reduceScatter($0.baseAddress!, count: count) }
                    return Array(b[shardRange(count: count, rank: c.rank, world: world)])
                }
                for r in 0..<world {
                    XCTAssertEqual(rs[r].count, shardRange(count: count, rank: r, world: world).count)
                    for (k, i) in shardRange(count: count, rank: r, world: world).enumerated() { XCTAssertEqual(rs[r][k], expected[i], accuracy: 1e-4) }
                }
                let ag = try onRanks(world) { c -> [Float] in
                    var b = [Float](repeating: -99, count: count)
                    for i in shardRange(count: count, rank: c.rank, world: world) { b[i] = Float(i) }
                    try b.withUnsafeMutableBufferPointer { try c.allGather($0.baseAddress!, count: count) }
                    return b
                }
                for r in 0..<world { XCTAssertEqual(ag[r], (0..<count).map(Float.init), "allGather world \(world) count \(count)") }
                let root = world - 1
                let bc = try onRanks(world) { c -> [Float] in
                    var b = c.rank == root ? inputs[root] : [Float](repeating: 0, count: count)
                    try b.withUnsafeMutableBufferPointer { try c.broadcast($0.baseAddress!, count: count, root: root) }
                    return b
                }
                for r in 0..<world { XCTAssertEqual(bc[r], inputs[root]) }
            }
        }
    }

    /// Two disjoint groups of a world of 5 ({0, 2, 4} and {3, 1}, in that ring order) run their
    /// collectives at the same time, then the whole world all-reduces: each equals the
    /// reference sum over its members, with shards by group rank. (Over TCP: group rings send
    /// before they receive.)
    func testGroupCollectivesOnDisjointGroups() throws {
        let groups = [[0, 2, 4], [3, 1]]
        for count in [1, 2, 13, 4099] {
            let inputs = (0..<5).map { input(rank: $0, count: count) }
            let out = try onRanks(5, tcp: true) { c -> (ar: [Float], rs: [Float], ag: [Float], bc: [Float], world: [Float]) in
                let members = groups.first { $0.contains(c.rank) }!
                let g = PointToPointGroup(parent: c, members: members)
                let W = members.count
                var ar = inputs[c.rank], rs = inputs[c.rank], ag = [Float](repeating: -99, count: count), bc = [Float](repeating: 0, count: count)
                try ar.withUnsafeMutableBufferPointer { try g.allReduce($0.baseAddress!, count: count) }
                try rs.withUnsafeMutableBufferPointer { try g.reduceScatter($0.baseAddress!, count: count) }
                for i in shardRange(count: count, rank: g.rank, world: W) { ag[i] = Float(i) }
                try ag.withUnsafeMutableBufferPointer { try g.allGather($0.baseAddress!, count: count) }
                if g.rank == 1 { bc = inputs[c.rank] }
                try bc.withUnsafeMutableBufferPointer { try g.broadcast($0.baseAddress!, count: count, root: 1) }
                try g.barrier()
                var world = inputs[c.rank]
                try world.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: count) }
                return (ar, Array(rs[shardRange(count: count, rank: g.rank, world: W)]), ag, bc, world)
            }
            for members in groups {
                let sum = (0..<count).map { i in members.reduce(Float(0)) { $0 + inputs[$1][i] } }
                for (gr, r) in members.enumerated() {
                    for i in 0..<count { XCTAssertEqual(out[r].ar[i], sum[i], accuracy: 1e-4, "group \(members) all-reduce, rank \(r), count \(count)") }
                    let mine = shardRange(count: count, rank: gr, world: members.count)
                    XCTAssertEqual(out[r].rs.count, mine.count)
                    for (k, i) in mine.enumerated() { XCTAssertEqual(out[r].rs[k], sum[i], accuracy: 1e-4, "group \(members) reduce-scatter") }
                    XCTAssertEqual(out[r].ag, (0..<count).map(Float.init), "group \(members) all-gather, rank \(r)")
                    XCTAssertEqual(out[r].bc, inputs[members[1]], "group \(members) broadcast from group rank 1")
                }
                XCTAssert(members.allSatisfy { out[$0].ar == out[members[0]].ar }, "identical all-reduce results in \(members)")
            }
            let total = (0..<count).map { i in (0..<5).reduce(Float(0)) { $0 + inputs[$1][i] } }
            for r in 0..<5 { for i in 0..<count { XCTAssertEqual(out[r].world[i], total[i], accuracy: 1e-4, "world all-reduce after the groups'") } }
        }
    }

    func testBFloat16Wire() throws {
        for world in [2, 3, 5] {
            let count = 1001
            let inputs = (0..<world).map { input(rank: $0, count: count) }
            let out = try onRanks(world, dtype: .bfloat16) { c -> [Float] in
                var b = inputs[c.rank]
                try b.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: count) }
                return b
            }
            for i in 0..<count {
                let e = (0..<world).reduce(Float(0)) { $0 + inputs[$1][i] }
                XCTAssertEqual(out[0][i], e, accuracy: max(abs(e), 1) * Float(world) * 1.0 / 128)
            }
            XCTAssert(out.allSatisfy { $0 == out[0] }, "bf16 all-gather keeps all ranks identical (world \(world))")
        }
    }

    func testPointToPointAndBarrier() throws {
        let got = try onRanks(3) { c -> [Float] in
            try c.barrier()
            var b = [Float](repeating: 0, count: 2500)
            if c.rank == 0 {
                let payload = (0..<2500).map(Float.init)
                try payload.withUnsafeBufferPointer { try c.send($0.baseAddress!, count: 2500, to: 2, tag: 42) }
            } else if c.rank == 2 {
                try b.withUnsafeMutableBufferPointer { try c.receive($0.baseAddress!, count: 2500, from: 0, tag: 42) }
            }
            try c.barrier()
            return b
        }
        XCTAssertEqual(got[2], (0..<2500).map(Float.init))
    }

    /// A rank that never arrives: the others time out with a message naming the collective,
    /// the step and the missing rank.
    func testTimeoutNamesCollectiveStepAndRank() throws {
        let results = try onRanks(3, timeout: 0.5) { c -> String in
            c.step = 17
            if c.rank == 1 { return "absent" }
            var b = [Float](repeating: 1, count: 10)
            do {
                try b.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: 10) }
                return "completed"
            } catch { return "\(error)" }
        }
        XCTAssert(results[2].contains("timed out") && results[2].contains("step 17") && results[2].contains("rank(s) 1"), results[2])
        XCTAssert(results[0].contains("timed out"), results[0])
    }

    /// Mismatched collectives between ranks are reported, not mixed up.
    func testMismatchedCollectivesAreDetected() throws {
        let results = try onRanks(2, timeout: 2) { c -> String in
            var b = [Float](repeating: 1, count: 10)
            do {
                if c.rank == 0 { try b.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: 10) } }
                else { try b.withUnsafeMutableBufferPointer { try c.broadcast($0.baseAddress!, count: 10, root: 1) } }
                return "ok"
            } catch { return "\(error)" }
        }
        XCTAssert(results.contains { $0.contains("different collectives") }, "\(results)")
    }

    func testWireHeaderRejectsGarbage() {
        let h = WireHeader(source: 3, kind: .allGather, dtype: .bfloat16, sequence: 99, chunk: 5, count: 1234)
        XCTAssertEqual(h.bytes.withUnsafeBytes { try? WireHeader.parse($0).get() }, h)
        for bad in [[UInt8](repeating: 0, count: 28), Array(h.bytes.prefix(20)), h.bytes + [0]] {
            XCTAssertNil(bad.withUnsafeBytes { try? WireHeader.parse($0).get() })
        }
        var wrongKind = h.bytes
        wrongKind[8] = 77
        XCTAssertNil(wrongKind.withUnsafeBytes { try? WireHeader.parse($0).get() })
    }
}
