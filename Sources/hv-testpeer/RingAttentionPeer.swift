import Foundation
import HVComm
import HVParallel
import HVTensor

/// One rank of the ring-attention test: `hv-testpeer ring-attention --rank R --world W --dir DIR`.
///
/// Rendezvous through DIR: each rank binds tcp://127.0.0.1:*, writes its endpoint to
/// DIR/endpoint-R and waits for all W files. Then, for each case (video length S, text length T,
/// masked or not), every rank builds the same random q/k/v/dout for the whole sequence [video |
/// text], runs full single-process attention as the reference, runs ring attention on its video
/// shard (shardRange of S) plus all text tokens, and prints one line per case:
///   RESULT <case> out=E dq=E dk=E dv=E
/// with E = max |ring - reference| / max(1, max |reference|). Text query rows get dout x c_r
/// (c_r sums to 1 over ranks), as the replicated text stream does in training; their dq and
/// the text keys' dk/dv are summed over ranks (all-reduce) before comparing.
func ringAttentionPeer(_ options: [String: String]) throws {
    guard let rank = Int(options["rank"] ?? ""), let world = Int(options["world"] ?? ""), let dir = options["dir"] else {
        fail("ring-attention needs --rank R --world W --dir DIR", code: 2)
    }
    let comm = try ZMQRingCommunicator(rank: rank, worldSize: world, bind: "tcp://127.0.0.1:*", timeoutSeconds: 60)
    defer { comm.close() }
    try comm.connect(peers: rendezvous(dir: dir, rank: rank, world: world, endpoint: comm.endpoint))
    // Small tiles so every block spans several FlashAttention tiles.
    FlashAttention.blockQ = 8
    FlashAttention.blockK = 8
    let ring = RingAttention(comm: comm)
    // (name, B, H, S video, T text, D, masked)
    let cases: [(String, Int, Int, Int, Int, Int, Bool)] = [
        ("S37-T6-masked", 2, 2, 37, 6, 16, true),
        ("S37-T6-unmasked", 2, 2, 37, 6, 16, false),
        ("S23-no-text", 1, 3, 23, 0, 8, false),
        ("S3-T4-masked", 1, 2, 3, 4, 8, true),
    ]
    // Chunk lengths of the travelling blocks: nil = one chunk per block; 4 and 5 divide none
    // or only some shards (S37 on 2-4 ranks: 18/19, 12/12/13, 9/9/9/10), 1 = one key per round.
    let chunkings: [Int?] = [nil, 4, 5, 1]
    for (ci, c) in cases.enumerated() {
        for chunk in chunkings {
            ring.chunkKeys = chunk
            let (caseName, B, H, S, T, D, masked) = c
            let name = caseName + "-chunk" + (chunk.map(String.init) ?? "all")
            var rng = HVRandom(seed: 1000 + UInt64(ci))
            func randn(_ shape: [Int]) -> Tensor {
                Tensor((0..<shape.reduce(1, *)).map { _ in rng.normal() }, shape: shape)
            }
            let qv = randn([B, H, S, D]), kv = randn([B, H, S, D]), vv = randn([B, H, S, D])
            let qt = randn([B, H, T, D]), kt = randn([B, H, T, D]), vt = randn([B, H, T, D])
            let dout = randn([B, H, S + T, D])
            // Batch b keeps its first T - b - 1 text tokens (row 1 of a 2-batch case pads more).
            let maskValues = (0..<B).flatMap { b in (0..<T).map { j in Float(j < max(1, T - b - 1) ? 1 : 0) } }
            let textMask: Tensor? = masked && T > 0 ? Tensor(maskValues, shape: [B, T]) : nil

            // Reference: one process, the whole sequence.
            let rq = Tensor.concat([qv, qt], axis: 2).detached(), rk = Tensor.concat([kv, kt], axis: 2).detached()
            let rv = Tensor.concat([vv, vt], axis: 2).detached()
            for t in [rq, rk, rv] { t.requiresGrad = true }
            let fullMask = textMask.map { Tensor.concat([Tensor(repeating: 1, shape: [B, S]), $0], axis: 1) }
            let ref = Tensor.scaledDotProductAttention(rq, rk, rv, keyMask: fullMask)
            ref.backward(dout)

            // Ring: this rank's video shard + all text tokens.
            let lengths = (0..<world).map { shardRange(count: S, rank: $0, world: world).count }
            let shard = shardRange(count: S, rank: rank, world: world)
            let n = shard.count
            func leaf(_ t: Tensor) -> Tensor { let l = t.contiguous().detached(); l.requiresGrad = true; return l }
            let q = leaf(Tensor.concat([qv.slice(axis: 2, start: shard.lowerBound, length: n), qt], axis: 2))
            let k = leaf(kv.slice(axis: 2, start: shard.lowerBound, length: n))
            let v = leaf(vv.slice(axis: 2, start: shard.lowerBound, length: n))
            let lk = T > 0 ? leaf(kt) : nil, lv = T > 0 ? leaf(vt) : nil
            let out = try ring.attention(q: q, k: k, v: v, shardLengths: lengths, localK: lk, localV: lv, localMask: textMask)
            let share = Float(rank + 1) / Float(world * (world + 1) / 2)
            let localDout = Tensor.concat([dout.slice(axis: 2, start: shard.lowerBound, length: n),
                                           dout.slice(axis: 2, start: S, length: T) * share], axis: 2)
            out.backward(localDout)

            func err(_ a: [Float], _ b: [Float]) -> Float {
                precondition(a.count == b.count, "size mismatch \(a.count) vs \(b.count)")
                let scale = max(1, b.map { abs($0) }.max() ?? 0)
                return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
            }
            func rows(_ t: Tensor, _ start: Int, _ len: Int) -> [Float] { t.slice(axis: 2, start: start, length: len).scalars }
            func summed(_ t: Tensor) throws -> [Float] {
                var values = t.scalars
                try values.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: $0.count) }
                return values
            }
            let eOut = max(err(rows(out, 0, n), rows(ref, shard.lowerBound, n)), err(rows(out, n, T), rows(ref, S, T)))
            let eDQ = max(err(rows(q.grad!, 0, n), rows(rq.grad!, shard.lowerBound, n)),
                          err(try summed(q.grad!.slice(axis: 2, start: n, length: T)), rows(rq.grad!, S, T)))
            var eDK = err(k.grad!.scalars, rows(rk.grad!, shard.lowerBound, n))
            var eDV = err(v.grad!.scalars, rows(rv.grad!, shard.lowerBound, n))
            if let lk, let lv {
                eDK = max(eDK, err(try summed(lk.grad!), rows(rk.grad!, S, T)))
                eDV = max(eDV, err(try summed(lv.grad!), rows(rv.grad!, S, T)))
            }
            print("RESULT \(name) shard=\(n) out=\(eOut) dq=\(eDQ) dk=\(eDK) dv=\(eDV)")
        }
    }
    try comm.barrier()
}

/// `hv-testpeer ring-attention-dead-peer --rank R --dir DIR --phase forward|backward` (2 ranks):
/// rank 1 leaves after the rendezvous (phase forward) or after one forward (phase backward).
/// Rank 0 runs the DiT's context-parallel attention, which cannot throw: it must return zeros
/// (no crash, no hang past the 3 s timeout) and `takeFailure` must then throw an error naming
/// the rank and the pass. Prints "FAILURE <phase> <error>" and "ZEROS <phase> <bool>".
func ringAttentionDeadPeer(_ options: [String: String]) throws {
    guard let rank = Int(options["rank"] ?? ""), let dir = options["dir"], let phase = options["phase"],
          phase == "forward" || phase == "backward" else {
        fail("ring-attention-dead-peer needs --rank R --dir DIR --phase forward|backward", code: 2)
    }
    let comm = try ZMQRingCommunicator(rank: rank, worldSize: 2, bind: "tcp://127.0.0.1:*", timeoutSeconds: 3)
    defer { comm.close() }
    try comm.connect(peers: rendezvous(dir: dir, rank: rank, world: 2, endpoint: comm.endpoint))
    let cp = ContextParallelAttention(group: comm)
    var rng = HVRandom(seed: 7)
    func leaf(_ shape: [Int]) -> Tensor {
        let t = Tensor((0..<shape.reduce(1, *)).map { _ in rng.normal() }, shape: shape)
        t.requiresGrad = true
        return t
    }
    // [B, n + L, heads, D]: 5 of 10 video tokens on each rank, 3 text tokens.
    let q = leaf([1, 8, 2, 16]), k = leaf([1, 8, 2, 16]), v = leaf([1, 8, 2, 16])
    if rank == 1 {
        if phase == "backward" { _ = cp.attention(q, k, v, videoTokens: 5, totalVideoTokens: 10, keyMask: nil); try cp.takeFailure() }
        return  // leaves; rank 0's next exchange times out
    }
    let out = cp.attention(q, k, v, videoTokens: 5, totalVideoTokens: 10, keyMask: nil)
    if phase == "backward" {
        try cp.takeFailure()  // the forward must have worked
        out.sum().backward()
        print("ZEROS backward \(q.grad!.scalars.allSatisfy { $0 == 0 } && k.grad!.scalars.allSatisfy { $0 == 0 })")
    } else {
        print("ZEROS forward \(out.scalars.allSatisfy { $0 == 0 })")
    }
    do {
        try cp.takeFailure()
        print("NO FAILURE \(phase)")
    } catch {
        print("FAILURE \(phase) \(error)")
    }
}

/// Writes this rank's endpoint to DIR/endpoint-R and returns all W endpoints (index = rank).
func rendezvous(dir: String, rank: Int, world: Int, endpoint: String, timeout: TimeInterval = 30) throws -> [String] {
    let tmp = "\(dir)/.endpoint-\(rank).tmp"
    try endpoint.write(toFile: tmp, atomically: false, encoding: .utf8)
    try FileManager.default.moveItem(atPath: tmp, toPath: "\(dir)/endpoint-\(rank)")
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        let found = (0..<world).map { try? String(contentsOfFile: "\(dir)/endpoint-\($0)", encoding: .utf8) }
        if found.allSatisfy({ $0 != nil }) { return found.map { $0! } }
        if Date() > deadline {
            fail("rendezvous: ranks \((0..<world).filter { found[$0] == nil }) did not write their endpoints within \(timeout) s", code: 1)
        }
        usleep(10_000)
    }
}
