import Foundation
import HVComm
import HVModel
import HVParallel
import HVTensor

/// Pipeline-parallel gradients (`train.pipeline_parallel` > 1).
///
/// Each rank holds and runs only its stage: stage 0 the text encoder, the stem and its blocks;
/// the middle stages their blocks; the last stage its blocks, the final layer and the loss (the
/// other parts of the model are released at construction). vec travels with h, so no parameter
/// is used by two stages. The ZeRO engine holds the stage's units only and reduces their
/// gradients over the stage's dp x cp ranks (`DeviceMesh.stageGroup`); the stages add up their
/// gradient norms for clipping over `pipeline.group`.
///
/// With context parallelism each cp rank of a stage holds its share of the video tokens and
/// all text tokens, the blocks' attention is ring attention over the stage's cp group, and
/// [h ; vec] goes to the same cp rank of the next stage.
///
/// Every stage rebuilds each micro-batch's inputs itself (data, noise, sigmas and the text mask
/// are pure functions of the seed, step and sample position), so only h and vec travel.
extension Trainer {
    /// Tags of pipeline messages: (step, micro-batch, direction), unique within a run.
    static func pipelineTag(step: Int, microBatch m: Int, backward: Bool) -> UInt64 {
        (UInt64(step) << 24) | (UInt64(m) << 1) | (backward ? 1 : 0)
    }

    /// Runs this stage's share of the 1F1B schedule over `train.micro_batches` micro-batches of
    /// this replica's slice of the global batch, accumulating its parameters' gradients of
    /// (micro-batch loss x B_m / batch_size). Returns the loss sum over samples (last stage; 0
    /// elsewhere), the seconds spent waiting in receives and the seconds of the whole schedule.
    func pipelineGradients(indices: [Int], step s: Int, frames T: Int) throws -> (lossSum: Float, idle: Double, total: Double) {
        guard let pipe = pipeline else { preconditionFailure("not a pipeline-parallel trainer") }
        let group = pipe.group, partition = pipe.partition
        let P = mesh.pp, stage = mesh.ppRank, M = config.train.micro_batches, H = config.model.hidden_size
        let B = batchSize, local = B / mesh.dp, micro = local / M
        let blocks = partition.stages[stage]
        let t0 = DispatchTime.now().uptimeNanoseconds
        var idle = 0.0, lossSum: Float = 0
        // Per micro-batch between its forward and backward: the received leaf (stages > 0) and
        // what the backward starts from (the packed output sent on, or the scaled loss).
        var live: [Int: (input: Tensor?, output: Tensor)] = [:]

        func waiting(_ body: () throws -> Void) rethrows {
            let w0 = DispatchTime.now().uptimeNanoseconds
            try body()
            idle += Double(DispatchTime.now().uptimeNanoseconds - w0) / 1e9
        }

        for op in PipelineSchedule.oneFOneB(stage: stage, stages: P, microBatches: M) {
            switch op {
            case .forward(let m):
                let pos = Array((mesh.dpRank * local + m * micro)..<(mesh.dpRank * local + (m + 1) * micro))
                let (x0, tokens) = try microBatch(indices: indices, positions: pos, step: s, frames: T)
                let ctx = model.stageContext(xShape: x0.shape, textMask: textEncoder.mask(tokens: tokens))
                let Bm = pos.count, S = ctx.videoTokens + config.text_encoder.max_tokens
                var h: Tensor, vec: Tensor, input: Tensor? = nil
                if stage == 0 {
                    // Only stage 0 runs (and differentiates through) the text encoder.
                    (h, vec) = model.stem(makeInputs((x0, textEncoder.encode(tokens: tokens)), positions: pos, step: s).0, context: ctx)
                } else {
                    let packed = Tensor(zeros: [Bm, S * H + H])                 // per sample [h ; vec]
                    try waiting { try group.receive(packed.pointer, count: packed.count, from: stage - 1,
                                                    tag: Self.pipelineTag(step: s, microBatch: m, backward: false)) }
                    packed.requiresGrad = true
                    input = packed
                    h = packed.slice(axis: 1, start: 0, length: S * H).reshape([Bm, S, H])
                    vec = packed.slice(axis: 1, start: S * H, length: H)
                }
                h = model.blocks(blocks, h: h, vec: vec, context: ctx)
                try model.contextParallel?.takeFailure()
                if stage == P - 1 {
                    let target = flowSample(x0: x0, positions: pos, step: s).target
                    let loss = velocityLoss(model.head(h, vec: vec, context: ctx), target: target, tokens: ctx.videoTokenRange)
                    lossSum += loss.item * Float(Bm)
                    live[m] = (input, loss * (Float(Bm) / Float(B)))
                } else {
                    let out = Tensor.concat([h.reshape([Bm, S * H]), vec], axis: 1)
                    try group.send(out.pointer, count: out.count, to: stage + 1, tag: Self.pipelineTag(step: s, microBatch: m, backward: false))
                    live[m] = (input, out)
                }
            case .backward(let m):
                guard let entry = live.removeValue(forKey: m) else { preconditionFailure("backward of micro-batch \(m) before its forward") }
                let input = entry.input, output = entry.output
                if stage == P - 1 {
                    output.backward()
                } else {
                    let grad = Tensor(zeros: output.shape)
                    try waiting { try group.receive(grad.pointer, count: grad.count, from: stage + 1,
                                                    tag: Self.pipelineTag(step: s, microBatch: m, backward: true)) }
                    output.backward(grad)
                }
                try model.contextParallel?.takeFailure()
                if let input {
                    let g = (input.grad ?? Tensor(zeros: input.shape)).contiguous()
                    try group.send(g.pointer, count: g.count, to: stage - 1, tag: Self.pipelineTag(step: s, microBatch: m, backward: true))
                }
            }
        }
        return (lossSum, idle, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
}
