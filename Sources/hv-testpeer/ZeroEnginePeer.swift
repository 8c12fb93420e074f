import Foundation
import HVComm
import HVParallel
import HVTensor
import HVTrain

/// One rank of the ZeRO bucket tests: `hv-testpeer zero-buckets --rank R --world W --dir DIR
/// --config RUN.yaml --stage S [--accum A] [--recompute 0|1] [--steps N] [--batch B]`.
///
/// Rendezvous as in `ring-attention`. Two trainers on the same data and seed: "bucketed"
/// calls `beginMicroBatch` before each micro-batch, so the engine reduces gradient buckets
/// during backward; "post" never does, so everything is reduced after backward by
/// `finishStep` (the reduction of every earlier version). For each step it prints
///   STEP <s> full=<F> reduced=<R> post_full=<PF> psi=<P> shard=<Q> norm=<a> post_norm=<b>
/// (F, R: the bucketed engine's full-size and reduced gradient elements right after the last
/// backward, before finishStep; PF: the post engine's full-size ones; Q: the sum of this rank's
/// shard sizes), and at the end
///   RESULT max_weight_diff=<D> max_weight=<M>
/// with D the largest |bucketed - post| over all parameters after the steps.
func zeroBucketsPeer(_ options: [String: String]) throws {
    guard let rank = Int(options["rank"] ?? ""), let world = Int(options["world"] ?? ""), let dir = options["dir"],
          let path = options["config"], let stage = Int(options["stage"] ?? "") else {
        fail("zero-buckets needs --rank R --world W --dir DIR --config RUN.yaml --stage S", code: 2)
    }
    let accum = Int(options["accum"] ?? "1") ?? 1, steps = Int(options["steps"] ?? "2") ?? 2
    var config = try RunConfig.load(path: path)
    config.train.grad_accum = accum
    config.train.recompute = options["recompute"] == "1"
    config.train.batch_size = Int(options["batch"] ?? "8") ?? 8
    config.data.image_ratio = 0
    let comm = try ZMQRingCommunicator(rank: rank, worldSize: world, bind: "tcp://127.0.0.1:*", timeoutSeconds: 60)
    defer { comm.close() }
    try comm.connect(peers: rendezvous(dir: dir, rank: rank, world: world, endpoint: comm.endpoint))

    let bucketed = try Trainer(config: config, comm: comm, zeroStage: stage)
    let post = try Trainer(config: config, comm: comm, zeroStage: stage)
    let B = config.train.batch_size, local = B / world, micro = local / accum
    let psi = bucketed.engine.units.reduce(0) { $0 + $1.count }
    let shard = bucketed.engine.units.reduce(0) { $0 + $1.shard.count }
    for s in 0..<steps {
        var line = "STEP \(s)"
        for (name, t) in [("bucketed", bucketed), ("post", post)] {
            try t.engine.beginStep()
            for m in 0..<accum {
                if name == "bucketed" { try t.engine.beginMicroBatch(last: m == accum - 1) }
                let pos = Array((rank * local + m * micro)..<(rank * local + (m + 1) * micro))
                try t.accumulateGradients(sampleIndices: pos.map { ($0 * 7 + s * 3) % config.data.count }, positions: pos, step: s,
                                      frames: config.data.frames)
            }
            if name == "bucketed" {
                line += " full=\(t.engine.fullGradientElements) reduced=\(t.engine.reducedGradientElements)"
            } else {
                line += " post_full=\(t.engine.fullGradientElements)"
            }
            let norm = try t.engine.finishStep(lr: 1e-3, clip: 1)
            line += name == "bucketed" ? " psi=\(psi) shard=\(shard) norm=\(norm)" : " post_norm=\(norm)"
        }
        print(line)
    }
    var diff: Float = 0, largest: Float = 0
    for ((_, a), (_, b)) in zip(bucketed.parameters, post.parameters) {
        for (x, y) in zip(a.scalars, b.scalars) { diff = max(diff, abs(x - y)); largest = max(largest, abs(y)) }
    }
    print("RESULT max_weight_diff=\(diff) max_weight=\(largest)")
}
