import Foundation
import HVComm
import HVModel
import HVNN
import HVTensor

/// ZeRO data parallelism (Rajbhandari et al.) over a `Communicator`, fp32 throughout.
///
/// Parameters are grouped into units — one per DiT block plus an `outer` unit (embeddings,
/// token refiner, final layer, text encoder). Each unit's parameters, flattened in name order,
/// are split into `worldSize` contiguous shards (`shardRange`); rank r owns shard r of every unit.
/// `comm` is the group the engine reduces and shards over: all ranks, or under pipeline
/// parallelism the ranks of one stage, with that stage's units only (`PipelinePartition.units`).
///
/// | stage | weights | grads | Adam m, v | per step traffic |
/// |---|---|---|---|---|
/// | 0 | full | full, all-reduced | full | all-reduce (2Ψ) |
/// | 1 | full | full, all-reduced | shard | all-reduce + all-gather of updated shards |
/// | 2 | full | reduce-scattered to the shard | shard | reduce-scatter + all-gather (2Ψ) |
/// | 3 | shard; a unit is gathered just before use and released after | shard | shard | all-gather in forward and again in backward + reduce-scatter (3Ψ) |
///
/// Model-state bytes per rank for Ψ parameters on N ranks (4 weights + 4 grads + 8 Adam):
/// stage 0: 16Ψ; stage 1: 8Ψ + 8Ψ/N; stage 2: 4Ψ + 12Ψ/N (full grads live only until the
/// unit's reduce-scatter); stage 3: 16Ψ/N plus the gathered unit in use.
/// Stage 3 needs block recomputation (a block's backward re-gathers its weights), which it
/// switches on.
///
/// Gradients are reduced unit by unit ("buckets") as backward produces them. Stages 0-2: every
/// parameter has a grad-ready hook (`Tensor.setGradReadyHook`); once all of a unit's
/// parameters are final for the sweep, the unit is reduced — all-reduced (0-1) or
/// reduce-scattered into this rank's persistent shard with the full gradients dropped (2) — in
/// the middle of backward. Units are reduced in one fixed order on every rank (last block
/// first, `outer` last: the order backward finishes them); a unit that is ready early waits for
/// the units before it, and whatever backward did not finish (parameters without a gradient
/// this step: zeros) is reduced in that order by the next `beginMicroBatch` or `finishStep`,
/// so every rank issues the same collectives in the same order. Stage 2 reduces every
/// micro-batch into the shard (gradient accumulation happens in the shard); stages 0-1 only
/// the last one (`beginMicroBatch(last:)`), earlier micro-batches accumulate in `.grad`.
/// Without `beginMicroBatch` calls (pipeline parallelism: stages run backward at different
/// times, so a collective inside one stage's backward would wait on a rank blocked in a
/// pipeline receive) everything is reduced by `finishStep`. Stage 3 reduce-scatters each
/// block's bucket as soon as its recomputed backward has run (`RecomputeHooks`).
public final class ZeroEngine: BlockHooks {
    public struct Unit {
        public let name: String
        public let params: [(String, Tensor)]
        public let offsets: [Int]
        public let count: Int
        public let shard: Range<Int>
    }

    public let stage: Int
    public let comm: Communicator
    public private(set) var units: [Unit] = []
    public let optimizer: AdamW
    /// Adam moments per unit: the whole unit (stage 0) or this rank's shard.
    public var exp_avg: [[Float]] = []
    public var exp_avg_sq: [[Float]] = []
    /// Stage 3: this rank's shard of each unit's weights (the only persistent copy).
    public var shardWeights: [[Float]] = []
    /// Reduced gradients: the whole unit (stages 0-1) or this rank's shard (stages 2-3).
    var reducedGrads: [[Float]] = []
    /// Called with a phase name at the points of a step where stage 3's memory changes (a unit
    /// gathered, its gradients reduce-scattered, the step finished): a diagnostic hook (the
    /// worker logs RSS there under HV_TRACE_MEMORY=2).
    public var memoryProbe: ((String) -> Void)?
    /// Ranks that hold the rest of the model (the other pipeline stages, one rank each): the
    /// global gradient norm adds up their sums of squares. nil: `comm` holds the whole model.
    public var normGroup: Communicator?
    /// Seconds spent in collectives since the last `takeCommSeconds()`.
    public private(set) var commSeconds = 0.0
    private var deferredError: Error?
    /// Stage 3: the flat gradient buffer of a unit whose backward is running (`attachFlatGrads`
    /// for outer; a block's gathered weights, overwritten by its gradients: `gradOverWeight`).
    private var gradFlat: [Storage?] = []
    /// Stage 3: the unit of each of the driven model's `blockModules` (nil: not held here).
    private var blockUnits: [Int?] = []
    /// Stage 3: units gathered for the whole step (every unit that is not a driven block).
    private var wholeStepUnits: [Int] { units.indices.filter { !blockUnits.contains($0) } }

    /// Bucketed reduction (stages 0-2) within one backward window (see the type's comment).
    private struct Buckets {
        /// Reduce units as their gradients become ready (else only when flushed).
        var armed = false
        var ready: [[Bool]]
        var readyCount: [Int]
        var reduced: [Bool]
        /// A parameter of an already reduced unit got more gradient (used by two sweeps).
        var late: [Bool]
        /// Position in `order` of the next unit to reduce.
        var cursor = 0
        init(_ units: [Unit]) {
            ready = units.map { [Bool](repeating: false, count: $0.params.count) }
            readyCount = Array(repeating: 0, count: units.count)
            reduced = Array(repeating: false, count: units.count)
            late = reduced
        }
    }
    private var buckets: Buckets
    /// The fixed reduction order: blocks from the last, then `outer`.
    private let reduceOrder: [Int]

    /// The DiT's units: `outer` (embeddings, refiner, final layer, `extraOuter`), `txt_in` and
    /// one per double/single block; stage 3 switches on block recomputation and gathers a block's
    /// unit just before its forward and backward.
    public convenience init(stage: Int, comm: Communicator, model: HunyuanDiT, extraOuter: [(String, Tensor)], optimizer: AdamW) throws {
        try self.init(stage: stage, comm: comm, units: Self.units(of: model, extraOuter: extraOuter), optimizer: optimizer)
        drive(model)
    }

    /// Stage 3: gathers the units of `model`'s blocks and token refiner (`blockModules`, by
    /// unit name) just before use and releases them after, through its `BlockHooks`, with block
    /// recomputation switched on; the engine may hold only some of them (a pipeline stage's).
    /// Units that are not blocks (`outer`, `final_layer`) stay gathered for the whole step.
    /// A no-op in stages 0-2.
    public func drive(_ model: HunyuanDiT) {
        guard stage == 3 else { return }
        let D = model.double_blocks.count
        let index = Dictionary(uniqueKeysWithValues: units.enumerated().map { ($0.element.name, $0.offset) })
        blockUnits = model.blockModules.indices.map { index[Self.unitName(ofBlockModule: $0, doubleBlocks: D)] }
        model.recomputeBlocks = true
        model.blockHooks = self
    }

    /// The DiT's units by name: `outer` (every parameter outside the blocks, then `extraOuter`),
    /// `txt_in`, then `double_blocks.k` and `single_blocks.k` (as `blockModules`).
    public static func units(of model: HunyuanDiT, extraOuter: [(String, Tensor)]) -> [(String, [(String, Tensor)])] {
        let blockNames = Set(model.blockModules.flatMap { $0.parameters().map { ObjectIdentifier($0) } })
        let outer = model.namedParameters().filter { !blockNames.contains(ObjectIdentifier($0.1)) } + extraOuter
        var groups: [(String, [(String, Tensor)])] = [("outer", outer)]
        let all = Dictionary(uniqueKeysWithValues: model.namedParameters().map { (ObjectIdentifier($0.1), $0.0) })
        let D = model.double_blocks.count
        for (i, m) in model.blockModules.enumerated() {
            let ps = m.parameters().map { (all[ObjectIdentifier($0)]!, $0) }
            groups.append((unitName(ofBlockModule: i, doubleBlocks: D), ps))
        }
        return groups
    }

    /// The unit of `blockModules[i]` of a DiT with `D` double blocks: `txt_in`, then
    /// `double_blocks.k` and `single_blocks.k`.
    static func unitName(ofBlockModule i: Int, doubleBlocks D: Int) -> String {
        i == 0 ? "txt_in" : i <= D ? "double_blocks.\(i - 1)" : "single_blocks.\(i - 1 - D)"
    }

    /// Any model given as named units (each unit is one gradient bucket and one checkpoint unit,
    /// its parameters flattened in the given order). Stage 3 needs a model that gathers each unit
    /// before use through `BlockHooks` (the DiT initialiser sets that up); a model without such
    /// hooks (the VAE) must use stages 0-2, whose weights stay whole on every rank.
    public init(stage: Int, comm: Communicator, units groups: [(String, [(String, Tensor)])], optimizer: AdamW) throws {
        precondition((0...3).contains(stage), "ZeRO stage must be 0-3")
        self.stage = stage
        self.comm = comm
        self.optimizer = optimizer
        for (name, ps) in groups {
            var offsets: [Int] = [], n = 0
            for (_, t) in ps { offsets.append(n); n += t.count }
            units.append(Unit(name: name, params: ps, offsets: offsets, count: n,
                              shard: shardRange(count: n, rank: comm.rank, world: comm.worldSize)))
        }
        gradFlat = Array(repeating: nil, count: units.count)
        buckets = Buckets(units)
        reduceOrder = Array(units.indices.reversed())
        if stage == 3 {
            // Shard unit by unit, dropping each unit's full weights at once, and give the freed
            // heap back before the Adam moments are allocated: the full model never coexists
            // with the sharded state.
            for u in units {
                shardWeights.append(copyWeights(u, range: u.shard))
                for (_, t) in u.params { t.release() }
            }
            HVRuntime.trimHeap()
        }
        for u in units {
            let stateCount = stage == 0 ? u.count : u.shard.count
            exp_avg.append([Float](repeating: 0, count: stateCount))
            exp_avg_sq.append([Float](repeating: 0, count: stateCount))
            // Stages 2-3 accumulate reduced gradient shards in place: allocated once, like the
            // moments, so that no step re-allocates them between the transient gathered units.
            reducedGrads.append(stage >= 2 ? [Float](repeating: 0, count: u.shard.count) : [])
        }
        // Stages 0-2: every unit's bucket; stage 3: the blocks' gradients over their weights
        // (`gradOverWeight` ignores the other units, whose gradients accumulate in place).
        for (i, u) in units.enumerated() {
            for (k, (_, t)) in u.params.enumerated() {
                t.setGradReadyHook { [weak self] _ in self?.gradReady(unit: i, param: k) }
            }
        }
    }

    deinit { for u in units { for (_, t) in u.params { t.setGradReadyHook(nil) } } }

    /// The values `range` of unit `u`'s flat weights (without building the whole flat copy).
    func copyWeights(_ u: Unit, range: Range<Int>) -> [Float] {
        var out = [Float](repeating: 0, count: range.count)
        out.withUnsafeMutableBufferPointer { buf in
            for (k, (_, t)) in u.params.enumerated() {
                let lo = max(range.lowerBound, u.offsets[k]), hi = min(range.upperBound, u.offsets[k] + t.count)
                if lo < hi { (buf.baseAddress! + (lo - range.lowerBound)).update(from: t.pointer + (lo - u.offsets[k]), count: hi - lo) }
            }
        }
        return out
    }

    // MARK: Flat views

    func flatWeights(_ u: Unit) -> [Float] {
        var out = [Float](repeating: 0, count: u.count)
        out.withUnsafeMutableBufferPointer { buf in
            for (k, (_, t)) in u.params.enumerated() { (buf.baseAddress! + u.offsets[k]).update(from: t.pointer, count: t.count) }
        }
        return out
    }

    func scatterWeights(_ u: Unit, _ flat: [Float]) {
        flat.withUnsafeBufferPointer { buf in
            for (k, (_, t)) in u.params.enumerated() { t.pointer.update(from: buf.baseAddress! + u.offsets[k], count: t.count) }
        }
    }

    /// Stage 3, the outer unit (gathered for the whole step): its gradients accumulate in place
    /// into one zeroed flat buffer (each parameter's `.grad` is a view of it), which is then
    /// reduce-scattered without a copy.
    func attachFlatGrads(_ i: Int) {
        let u = units[i]
        if gradFlat[i] != nil { return }
        let s = Storage(mappedZeros: u.count)
        for (k, (_, t)) in u.params.enumerated() {
            if let g = t.grad { (s.pointer + u.offsets[k]).update(from: g.contiguous().pointer, count: t.count) }
            t.grad = Tensor(storage: s, shape: t.shape, offset: u.offsets[k])
        }
        gradFlat[i] = s
    }

    private func timed<R>(_ body: () throws -> R) rethrows -> R {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer { commSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 }
        return try body()
    }

    public func takeCommSeconds() -> Double { defer { commSeconds = 0 }; return commSeconds }

    // MARK: Stage 3 gather / release

    /// All-gathers unit `i`'s weights into full tensors (views of one flat buffer, returned).
    @discardableResult
    func gather(_ i: Int) throws -> Storage {
        let u = units[i]
        let flat = Storage(mappedZeros: u.count)
        shardWeights[i].withUnsafeBufferPointer { (flat.pointer + u.shard.lowerBound).update(from: $0.baseAddress!, count: $0.count) }
        try timed { try comm.allGather(flat.pointer, count: u.count) }
        for (k, (_, t)) in u.params.enumerated() { t.bind(to: flat, offset: u.offsets[k]) }
        memoryProbe?("gathered \(u.name)")
        return flat
    }

    func release(_ i: Int) { for (_, t) in units[i].params { t.release() } }

    /// Reduce-scatters unit `i`'s gradients, adding this rank's shard into `reducedGrads[i]`,
    /// and drops the full gradients.
    func reduceScatterGrads(_ i: Int) throws {
        let u = units[i]
        let flat: Storage
        if let g = gradFlat[i] {
            flat = g
            gradFlat[i] = nil
        } else {
            // Copy parameter by parameter, dropping each gradient once copied.
            flat = Storage(mappedZeros: u.count)
            for (k, (_, t)) in u.params.enumerated() {
                if let g = t.grad { (flat.pointer + u.offsets[k]).update(from: g.contiguous().pointer, count: t.count) }
                t.zeroGrad()
            }
        }
        for (_, t) in u.params { t.zeroGrad() }
        try timed { try comm.reduceScatter(flat.pointer, count: u.count) }
        let part = UnsafeBufferPointer(start: flat.pointer + u.shard.lowerBound, count: u.shard.count)
        precondition(reducedGrads[i].count == part.count)
        reducedGrads[i].withUnsafeMutableBufferPointer { r in for k in 0..<part.count { r[k] += part[k] } }
        memoryProbe?("reduce-scattered \(u.name)")
    }

    /// Stages 0-1: all-reduces unit `i`'s gradients (missing ones as zeros) into
    /// `reducedGrads[i]` (added when the unit was already reduced this step) and drops them.
    func allReduceGrads(_ i: Int) throws {
        let u = units[i]
        var flat = [Float](repeating: 0, count: u.count)
        flat.withUnsafeMutableBufferPointer { buf in
            for (k, (_, t)) in u.params.enumerated() {
                if let g = t.grad?.contiguous() { (buf.baseAddress! + u.offsets[k]).update(from: g.pointer, count: t.count) }
                t.zeroGrad()
            }
        }
        try timed { try flat.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: u.count) } }
        if reducedGrads[i].isEmpty {
            reducedGrads[i] = flat
        } else {
            reducedGrads[i].withUnsafeMutableBufferPointer { r in for k in r.indices { r[k] += flat[k] } }
        }
    }

    /// Reduces unit `i` the stage's way (stages 0-2).
    func reduceUnit(_ i: Int) throws {
        if stage == 2 { try reduceScatterGrads(i) } else { try allReduceGrads(i) }
    }

    /// Stage 3: during a block's recomputed backward, which of its parameters' gradients have
    /// been written over their own weights in the gathered buffer (`gradFlat`).
    private var gradOverWeights: (unit: Int, written: [Bool])?

    /// Stage 3, a block's parameter `k` of unit `i` is final: its weight is dead (every op that
    /// read it has run its backward), so its gradient goes into the weight's place in the
    /// gathered buffer, which becomes the unit's flat gradient — weights and gradients of a
    /// block are never both full-size in memory.
    func gradOverWeight(unit i: Int, param k: Int) {
        guard var state = gradOverWeights, state.unit == i, let flat = gradFlat[i] else { return }
        let t = units[i].params[k].1, dst = flat.pointer + units[i].offsets[k]
        if !state.written[k] { dst.update(repeating: 0, count: t.count) }
        if let g = t.grad?.contiguous() {
            let src = g.pointer
            for j in 0..<t.count { dst[j] += src[j] }
        }
        t.zeroGrad()
        state.written[k] = true
        gradOverWeights = state
    }

    /// Grad-ready hook of parameter `k` of unit `i`.
    func gradReady(unit i: Int, param k: Int) {
        if stage == 3 { gradOverWeight(unit: i, param: k); return }
        guard buckets.armed else { return }
        if buckets.reduced[i] {
            // Reduced already: the extra gradient is reduced again (additively) by the flush.
            buckets.late[i] = true
            return
        }
        if !buckets.ready[i][k] {
            buckets.ready[i][k] = true
            buckets.readyCount[i] += 1
        }
        while buckets.cursor < reduceOrder.count {
            let j = reduceOrder[buckets.cursor]
            guard buckets.readyCount[j] == units[j].params.count else { break }
            buckets.cursor += 1
            buckets.reduced[j] = true
            deferring { try reduceUnit(j) }
        }
    }

    /// Reduces, in the fixed order, every unit an armed window (or with `all`, any window)
    /// has not reduced, and again those with late gradients; then starts a new window, armed
    /// or not. An unarmed window's gradients otherwise stay in `.grad` (accumulation).
    private func flushBuckets(arm: Bool, all: Bool = false) throws {
        if let e = deferredError { deferredError = nil; buckets = Buckets(units); throw e }
        if buckets.armed || all { for j in reduceOrder[buckets.cursor...] { try reduceUnit(j) } }
        for j in reduceOrder where buckets.late[j] { try reduceUnit(j) }
        buckets = Buckets(units)
        buckets.armed = arm
    }

    /// Before each micro-batch's forward + backward (stages 0-2; a no-op in stage 3): reduces
    /// what the previous micro-batch left and arms bucketed reduction for this one's backward —
    /// every micro-batch in stage 2, only the `last` in stages 0-1. Collective: every rank calls
    /// it at the same points.
    public func beginMicroBatch(last: Bool) throws {
        guard stage <= 2 else { return }
        try flushBuckets(arm: stage == 2 || last)
    }

    /// Elements of full-size (unsharded) gradients this rank holds now: parameters' `.grad`
    /// and stage 3's flat unit buffers. After a stage-2 backward this is 0: each bucket was
    /// reduce-scattered and dropped as backward finished it.
    public var fullGradientElements: Int {
        units.reduce(0) { n, u in n + u.params.reduce(0) { $0 + ($1.1.grad == nil ? 0 : $1.1.count) } }
            + gradFlat.reduce(0) { $0 + ($1?.count ?? 0) }
    }

    /// Elements of reduced gradients held for the optimizer step: whole units (stages 0-1) or
    /// this rank's shards (stages 2-3, persistent buffers).
    public var reducedGradientElements: Int { reducedGrads.reduce(0) { $0 + $1.count } }

    /// This rank's model state in bytes (fp32): the weights it keeps (its units' tensors; stage
    /// 3: its shards), its Adam moments as allocated, and the gradients a step holds at most
    /// (whole units in stages 0-1; this rank's shards in stages 2-3, where stage 2 also holds one
    /// unit's full gradients briefly, not counted).
    public var modelStateBytes: (weights: Int, gradients: Int, moments: Int) {
        let params = units.reduce(0) { $0 + $1.count }, shards = units.reduce(0) { $0 + $1.shard.count }
        let weights = stage == 3 ? shardWeights.reduce(0) { $0 + $1.count } : params
        let moments = exp_avg.reduce(0) { $0 + $1.count } + exp_avg_sq.reduce(0) { $0 + $1.count }
        return (4 * weights, 4 * (stage <= 1 ? params : shards), 4 * moments)
    }

    private func deferring(_ body: () throws -> Void) {
        guard deferredError == nil else { return }
        do { try body() } catch { deferredError = error }
    }

    public func willForward(_ block: Int) { if stage == 3, let i = blockUnits[block] { deferring { try gather(i) } } }
    public func didForward(_ block: Int) { if stage == 3, let i = blockUnits[block] { release(i) } }
    public func recomputeHooks(_ block: Int) -> RecomputeHooks? {
        guard stage == 3, let i = blockUnits[block] else { return nil }
        return RecomputeHooks(
            willBackward: { [unowned self] in
                deferring {
                    gradFlat[i] = try gather(i)
                    gradOverWeights = (i, Array(repeating: false, count: units[i].params.count))
                }
            },
            didBackward: { [unowned self] in
                if let state = gradOverWeights, state.unit == i {
                    // Parameters backward did not reach: zero gradient (or what .grad holds).
                    for (k, done) in state.written.enumerated() where !done { gradOverWeight(unit: i, param: k) }
                }
                gradOverWeights = nil
                deferring { try reduceScatterGrads(i) }
                gradFlat[i] = nil
                release(i)
            })
    }

    /// Before the first micro-batch of a step (stage 3: gathers the units that are not blocks).
    public func beginStep() throws {
        if stage <= 2 {
            if let e = deferredError { deferredError = nil; throw e }
            buckets = Buckets(units)
        }
        if stage == 3 {
            for i in wholeStepUnits {
                try gather(i)
                attachFlatGrads(i)
            }
        }
    }

    /// After the last micro-batch's backward: reduces gradients, clips them to `clip` (global
    /// L2 norm, 0 = off), applies AdamW at `lr` to this rank's part and re-assembles weights.
    /// Returns the global gradient norm before clipping.
    public func finishStep(lr: Float, clip: Float) throws -> Float {
        if let e = deferredError { deferredError = nil; throw e }
        if stage <= 2 {
            // What backward did not reduce (all of it without `beginMicroBatch`).
            try flushBuckets(arm: false, all: true)
        } else {
            for i in wholeStepUnits {
                try reduceScatterGrads(i)
                release(i)
            }
        }
        // Global norm: stages 0-1 hold full reduced grads (identical on every rank).
        var sumsq = 0.0
        for i in units.indices { for g in reducedGrads[i] { sumsq += Double(g) * Double(g) } }
        if stage >= 2 {
            var s = [Float(sumsq)]
            try timed { try s.withUnsafeMutableBufferPointer { try comm.allReduce($0.baseAddress!, count: 1) } }
            sumsq = Double(s[0])
        }
        if let normGroup {
            var s = [Float(sumsq)]
            try timed { try s.withUnsafeMutableBufferPointer { try normGroup.allReduce($0.baseAddress!, count: 1) } }
            sumsq = Double(s[0])
        }
        let norm = Float(sumsq.squareRoot())
        let scale: Float = clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1
        optimizer.lr = lr
        let step = optimizer.step + 1
        optimizer.setStep(step)
        let bc1 = 1 - Foundation.pow(optimizer.beta1, Float(step)), bc2 = 1 - Foundation.pow(optimizer.beta2, Float(step))
        for i in units.indices {
            let u = units[i]
            if stage >= 2 {
                // The shard buffers are persistent: scale in place, update, zero for the next step.
                if scale != 1 { reducedGrads[i].withUnsafeMutableBufferPointer { r in for k in r.indices { r[k] *= scale } } }
                if stage == 2 {
                    var part = copyWeights(u, range: u.shard)
                    adam(&part, reducedGrads[i], i)
                    try gatherUpdated(u, part)
                } else {
                    adam(&shardWeights[i], reducedGrads[i], i)
                }
                reducedGrads[i].withUnsafeMutableBufferPointer { r in r.update(repeating: 0) }
                continue
            }
            // The gradient slice this rank updates, scaled by the clip factor.
            var g: [Float] = stage == 0 ? reducedGrads[i] : Array(reducedGrads[i][u.shard])
            if scale != 1 { for k in g.indices { g[k] *= scale } }
            if stage == 0 {
                var w = flatWeights(u)
                adam(&w, g, i)
                scatterWeights(u, w)
            } else {
                var part = copyWeights(u, range: u.shard)
                adam(&part, g, i)
                try gatherUpdated(u, part)
            }
            reducedGrads[i] = []
        }

        /// Stages 1-2: this rank's updated shard `part` of unit `u`, all-gathered with the other
        /// ranks' into the parameters through one mapped flat buffer (unmapped after, so no
        /// full-unit copy stays in the heap).
        func gatherUpdated(_ u: Unit, _ part: [Float]) throws {
            let flat = Storage(mappedZeros: u.count)
            part.withUnsafeBufferPointer { (flat.pointer + u.shard.lowerBound).update(from: $0.baseAddress!, count: $0.count) }
            try timed { try comm.allGather(flat.pointer, count: u.count) }
            for (k, (_, t)) in u.params.enumerated() { t.pointer.update(from: flat.pointer + u.offsets[k], count: t.count) }
        }

        func adam(_ w: inout [Float], _ g: [Float], _ i: Int) {
            precondition(w.count == g.count && w.count == exp_avg[i].count)
            let n = w.count
            w.withUnsafeMutableBufferPointer { wp in g.withUnsafeBufferPointer { gp in
                exp_avg[i].withUnsafeMutableBufferPointer { mp in exp_avg_sq[i].withUnsafeMutableBufferPointer { vp in
                    AdamW.kernel(p: wp.baseAddress!, g: gp.baseAddress!, m: mp.baseAddress!, v: vp.baseAddress!, n: n, lr: lr,
                                 beta1: optimizer.beta1, beta2: optimizer.beta2, eps: optimizer.eps, weightDecay: optimizer.weightDecay,
                                 bc1: bc1, bc2: bc2)
                }}
            }}
        }
        memoryProbe?("optimizer step done")
        return norm
    }

    // MARK: Checkpoint state

    /// This rank's shard of unit `i`: weights, Adam m and v over `units[i].shard`.
    public func shardState(_ i: Int) -> (weights: [Float], expAvg: [Float], expAvgSq: [Float]) {
        let u = units[i]
        let w = stage == 3 ? shardWeights[i] : Array(flatWeights(u)[u.shard])
        if stage == 0 {
            return (w, Array(exp_avg[i][u.shard]), Array(exp_avg_sq[i][u.shard]))
        }
        return (w, exp_avg[i], exp_avg_sq[i])
    }

    /// Lends this rank's shard of unit `i` (weights, Adam m, v over `units[i].shard`) to `body`
    /// without the copies of `shardState`: moments and stage-3 weights are lent in place, other
    /// stages' weights are copied once, shard range only, from the parameter tensors.
    public func withShardState<R>(_ i: Int, _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        let u = units[i]
        func withMoments(_ w: UnsafeBufferPointer<Float>) throws -> R {
            let m = stage == 0 ? exp_avg[i][u.shard] : exp_avg[i][...], v = stage == 0 ? exp_avg_sq[i][u.shard] : exp_avg_sq[i][...]
            return try m.withUnsafeBufferPointer { m in try v.withUnsafeBufferPointer { v in try body(w, m, v) } }
        }
        if stage == 3 { return try shardWeights[i].withUnsafeBufferPointer { try withMoments($0) } }
        let w = [Float](unsafeUninitializedCapacity: u.shard.count) { out, n in
            for (k, (_, t)) in u.params.enumerated() {
                let lo = max(u.offsets[k], u.shard.lowerBound), hi = min(u.offsets[k] + t.count, u.shard.upperBound)
                if lo < hi { (out.baseAddress! + (lo - u.shard.lowerBound)).update(from: t.pointer + (lo - u.offsets[k]), count: hi - lo) }
            }
            n = u.shard.count
        }
        return try w.withUnsafeBufferPointer { try withMoments($0) }
    }

    /// Restores unit `i` from its full flat weights and Adam moments (any world size / stage).
    public func loadFull(_ i: Int, weights: [Float], expAvg: [Float], expAvgSq: [Float]) {
        let u = units[i]
        precondition(weights.count == u.count && expAvg.count == u.count && expAvgSq.count == u.count, "unit \(u.name): size mismatch")
        if stage == 3 {
            shardWeights[i] = Array(weights[u.shard])
        } else {
            scatterWeights(u, weights)
        }
        exp_avg[i] = stage == 0 ? expAvg : Array(expAvg[u.shard])
        exp_avg_sq[i] = stage == 0 ? expAvgSq : Array(expAvgSq[u.shard])
    }

    /// Restores unit `i` from exactly what this rank keeps: `weights` full (stages 0-2) or this
    /// rank's shard (stage 3); `expAvg`/`expAvgSq` full (stage 0) or the shard (stages 1-3).
    public func loadOwned(_ i: Int, weights: [Float], expAvg: [Float], expAvgSq: [Float]) {
        let u = units[i]
        let w = stage == 3 ? u.shard.count : u.count, m = stage == 0 ? u.count : u.shard.count
        precondition(weights.count == w && expAvg.count == m && expAvgSq.count == m, "unit \(u.name): size mismatch")
        if stage == 3 { shardWeights[i] = weights } else { scatterWeights(u, weights) }
        exp_avg[i] = expAvg
        exp_avg_sq[i] = expAvgSq
    }

    /// Restores unit `i` from this rank's shard of the weights and moments (a checkpoint saved
    /// with the same world size); the parts other ranks hold arrive by all-gather (collective
    /// in stages 0-2: every rank calls it for every unit in order).
    public func loadShard(_ i: Int, weights: [Float], expAvg: [Float], expAvgSq: [Float]) throws {
        let u = units[i]
        precondition(weights.count == u.shard.count && expAvg.count == u.shard.count && expAvgSq.count == u.shard.count,
                     "unit \(u.name): shard size mismatch")
        func gathered(_ part: [Float]) throws -> [Float] {
            var full = [Float](repeating: 0, count: u.count)
            full.replaceSubrange(u.shard, with: part)
            try full.withUnsafeMutableBufferPointer { try comm.allGather($0.baseAddress!, count: u.count) }
            return full
        }
        let w = stage == 3 ? weights : try gathered(weights)
        if stage == 0 {
            loadOwned(i, weights: w, expAvg: try gathered(expAvg), expAvgSq: try gathered(expAvgSq))
        } else {
            loadOwned(i, weights: w, expAvg: expAvg, expAvgSq: expAvgSq)
        }
    }

    /// Stage 3: materialises every unit's full weights (for evaluation or saving); `releaseAll` undoes it.
    public func gatherAll() throws { if stage == 3 { for i in units.indices { try gather(i) } } }
    public func releaseAll() { if stage == 3 { for i in units.indices { release(i) } } }
}
