/// Whether ops record graph history. Compute in one thread per process (hv workers are
/// single-threaded at the op level), so a process-wide flag suffices.
public enum GradMode {
    nonisolated(unsafe) public private(set) static var isEnabled = true

    /// Runs `body` without recording history (sampling, optimizer steps, evaluation).
    @discardableResult
    public static func withoutGrad<R>(_ body: () throws -> R) rethrows -> R {
        let old = isEnabled
        isEnabled = false
        defer { isEnabled = old }
        return try body()
    }

    @discardableResult
    public static func withGrad<R>(_ body: () throws -> R) rethrows -> R {
        let old = isEnabled
        isEnabled = true
        defer { isEnabled = old }
        return try body()
    }
}

/// One recorded op: its inputs and the rule mapping the output gradient to input gradients
/// (nil for an input that needs none). Rules run with grad recording off.
public final class GradNode {
    public let name: String
    let inputs: [Tensor]
    let backward: (Tensor) -> [Tensor?]
    /// For single-input ops whose input gradient is mostly zeros (a slice): adds the input
    /// gradient for the output gradient g into `into`, the input's gradient so far, in place.
    /// `backward` must then return a fresh buffer. Several slices of one tensor (q, k and v of a
    /// fused projection) fill one buffer instead of one zero-filled full-size tensor each, summed.
    let accumulate: ((_ g: Tensor, _ into: Tensor) -> Void)?
    /// Creation order (torch's sequence_nr): `backward()` runs nodes from the newest to the
    /// oldest, i.e. in the reverse of the forward, so a block's nodes run together.
    let sequence: Int
    nonisolated(unsafe) static var nextSequence = 0
    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?],
         accumulate: ((Tensor, Tensor) -> Void)? = nil) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
        self.accumulate = inputs.count == 1 ? accumulate : nil
        GradNode.nextSequence &+= 1
        sequence = GradNode.nextSequence
    }
}

/// Ready non-leaf tensors of a backward sweep, newest node first (a binary max-heap on
/// `GradNode.sequence`).
struct ReadyQueue {
    private var heap: [(Int, Tensor)] = []
    var isEmpty: Bool { heap.isEmpty }

    mutating func push(_ t: Tensor, _ sequence: Int) {
        heap.append((sequence, t))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[parent].0 < heap[i].0 else { break }
            heap.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> Tensor? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast().1
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && heap[l].0 > heap[m].0 { m = l }
            if r < heap.count && heap[r].0 > heap[m].0 { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return top
    }
}

extension Tensor {
    /// Whether an op on `inputs` records history now (ops skip buffers only backward needs).
    @inline(__always)
    static func willRecord(_ inputs: [Tensor]) -> Bool {
        GradMode.isEnabled && inputs.contains(where: { $0.requiresGrad })
    }

    /// Attaches `backward` to `out` when recording is on and any input requires grad.
    @inline(__always)
    static func record(_ name: String, _ out: Tensor, _ inputs: [Tensor], accumulate: ((Tensor, Tensor) -> Void)? = nil,
                       _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: { $0.requiresGrad }) else { return out }
        out.requiresGrad = true
        out.gradNode = GradNode(name: name, inputs: inputs, backward: backward, accumulate: accumulate)
        return out
    }

    /// Records a custom op defined outside HVTensor (e.g. distributed ring attention): `out`
    /// gets `backward`, mapping its gradient to one gradient (or nil) per input, when recording
    /// is on and an input requires grad. The rule runs with recording off.
    public static func recordCustom(_ name: String, output out: Tensor, inputs: [Tensor],
                                    backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        record(name, out, inputs, backward)
    }

    public var isLeaf: Bool { gradNode == nil }

    /// Reverse-mode sweep from this tensor. `gradient` defaults to ones (a scalar loss).
    /// Leaf tensors that require grad accumulate into `.grad`.
    ///
    /// Nodes run newest first (reverse creation order), each once every op that consumed its
    /// output has run (dependency counts, as torch's engine), so a leaf's gradient for this
    /// sweep is complete as soon as its last consumer has run: it is accumulated into `.grad`
    /// right then and its `gradReadyHook` called — while backward goes on through earlier
    /// layers (ZeRO reduces a bucket of parameters there). Contributions to one tensor are
    /// summed in the order their consumers run, which depends only on the graph: the result is
    /// deterministic.
    public func backward(_ gradient: Tensor? = nil) {
        let seed = gradient ?? Tensor(repeating: 1, shape: shape)
        precondition(seed.shape == shape, "backward: gradient shape \(seed.shape) != \(shape)")
        guard requiresGrad else { return }
        // Consumers per reachable tensor (an op using x twice counts twice). Only identifiers are
        // kept: a tensor stays alive while a node that has not run yet holds it as an input.
        var pending: [ObjectIdentifier: Int] = [ObjectIdentifier(self): 0]
        var stack: [Tensor] = [self]
        while let t = stack.popLast() {
            guard let node = t.gradNode else { continue }
            for input in node.inputs where input.requiresGrad {
                let key = ObjectIdentifier(input)
                if let n = pending[key] {
                    pending[key] = n + 1
                } else {
                    pending[key] = 1
                    stack.append(input)
                }
            }
        }
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        // Tensors whose gradient so far is a contiguous buffer this sweep allocated (a sum, or a
        // slice's fresh buffer) that nothing else references: further contributions are added
        // into it in place. A gradient an op's rule returned may alias another tensor's (add
        // passes g on to both inputs), so it is never written to here; a leaf takes it as its
        // .grad (which later accumulations and the optimizer write to) only when nothing else
        // holds it.
        var owned = Set<ObjectIdentifier>()
        var ready = ReadyQueue()
        GradMode.withoutGrad {
            // A tensor whose consumers have all run: leaves are finished at once, ops queued.
            func finish(_ t: Tensor) {
                if let node = t.gradNode { ready.push(t, node.sequence); return }
                owned.remove(ObjectIdentifier(t))
                if var g = grads.removeValue(forKey: ObjectIdentifier(t)) {
                    // Nothing else holds g (a weight's fresh dW, typically): it becomes .grad as is.
                    let adopt = isKnownUniquelyReferenced(&g) && g.ownsWholeStorage()
                    t.accumulateGrad(g, adopting: adopt)
                }
                t.gradReadyHook?(t)
            }
            finish(self)
            while let t = ready.pop() {
                let node = t.gradNode!
                // Backward rules capture their op's output (e.g. y for exp), and the output owns
                // its node: drop the node once used so the step's graph is freed (no retain_graph).
                t.gradNode = nil
                owned.remove(ObjectIdentifier(t))
                let g = grads.removeValue(forKey: ObjectIdentifier(t))
                var inputGrads: [Tensor?]? = nil
                if let g, let accumulate = node.accumulate, node.inputs[0].requiresGrad {
                    let key = ObjectIdentifier(node.inputs[0])
                    if let existing = grads[key] {
                        let into = owned.contains(key) ? existing : existing.copy()
                        accumulate(g, into)
                        grads[key] = into
                    } else {
                        let ig = node.backward(g)[0]!
                        precondition(ig.shape == node.inputs[0].shape && ig.isContiguous, "\(node.name): gradient \(ig.shape) for input \(node.inputs[0].shape)")
                        grads[key] = ig
                    }
                    owned.insert(key)
                } else {
                    inputGrads = g.map { node.backward($0) }
                }
                precondition(inputGrads == nil || inputGrads!.count == node.inputs.count, "\(node.name): wrong gradient count")
                for (j, input) in node.inputs.enumerated() where input.requiresGrad {
                    let key = ObjectIdentifier(input)
                    if let ig = inputGrads?[j] {
                        inputGrads?[j] = nil  // grads holds it alone: a leaf can adopt it
                        precondition(ig.shape == input.shape, "\(node.name): gradient \(ig.shape) for input \(input.shape)")
                        if let existing = grads[key] {
                            if owned.contains(key) {
                                existing.addInPlace(ig)
                            } else {
                                grads[key] = existing.adding(ig)
                                owned.insert(key)
                            }
                        } else {
                            grads[key] = ig
                        }
                    }
                    let n = pending[key]! - 1
                    if n > 0 { pending[key] = n; continue }
                    pending[key] = nil
                    finish(input)
                }
            }
        }
    }

    /// Sets the hook `backward()` calls on this leaf once a sweep that reaches it has finished
    /// its gradient — accumulated into `.grad` (unchanged if every consumer gave nil) — while
    /// the sweep goes on (torch's `register_post_accumulate_grad_hook`). A leaf reached by
    /// several sweeps (a parameter used in two `recompute` regions) gets one call per sweep.
    /// nil removes it. The hook runs with recording off and must not start another backward
    /// of the same graph.
    public func setGradReadyHook(_ hook: ((Tensor) -> Void)?) {
        precondition(hook == nil || isLeaf, "grad-ready hooks are for leaves (parameters)")
        gradReadyHook = hook
    }

    /// `adopting`: g is referenced by nothing else and owns its whole storage, so it can be
    /// `.grad` itself; otherwise it may alias another tensor's storage and is copied.
    func accumulateGrad(_ g: Tensor, adopting: Bool = false) {
        if let existing = grad {
            existing.addInPlace(g)
        } else {
            grad = adopting ? g : g.copy()
        }
    }

    /// Clears `.grad` (start of a new accumulation window).
    public func zeroGrad() { grad = nil }

    /// Out-of-place sum outside the graph, same shapes.
    func adding(_ other: Tensor) -> Tensor {
        let a = contiguous(), b = other.contiguous()
        let out = Tensor(uninitialized: shape)
        let p = out.pointer, x = a.pointer, y = b.pointer
        Parallel.chunks(count) { r in for i in r { p[i] = x[i] + y[i] } }
        return out
    }
}

/// Called around the recomputed forward + backward of a `recompute` region (ZeRO-3 gathers the
/// region's parameters before and reduce-scatters their gradients after).
public struct RecomputeHooks {
    public var willBackward: () -> Void
    public var didBackward: () -> Void
    public init(willBackward: @escaping () -> Void, didBackward: @escaping () -> Void) {
        self.willBackward = willBackward
        self.didBackward = didBackward
    }
}

/// Activation recomputation: runs `body` without storing its activations; during backward the
/// forward is run again with recording on and differentiated. Parameters used inside `body`
/// receive their gradients as usual. `body` must be deterministic.
public func recompute(_ inputs: [Tensor], hooks: RecomputeHooks? = nil, _ body: @escaping ([Tensor]) -> Tensor) -> Tensor {
    guard GradMode.isEnabled else { return body(inputs) }
    let out = GradMode.withoutGrad { body(inputs) }
    // The recomputed output may require grad through parameters even when no input does.
    out.requiresGrad = true
    out.gradNode = GradNode(name: "recompute", inputs: inputs) { g in
        let detachedInputs = inputs.map { t -> Tensor in
            let d = t.detached()
            d.requiresGrad = t.requiresGrad
            return d
        }
        hooks?.willBackward()
        GradMode.withGrad {
            let y = body(detachedInputs)
            y.backward(g)
        }
        hooks?.didBackward()
        return detachedInputs.map { $0.grad }
    }
    return out
}
